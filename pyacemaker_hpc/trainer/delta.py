"""Step 7: move the step-6 ACE (fitted on surrogate labels) onto the DFT labels.

Two modes (``pacemaker.delta_mode``):

``weighted_refit``
    Continue the base potential (``pacemaker -p base.yaml``, same basis, same reference
    energies) on surrogate + DFT data for ``delta_max_iterations``.  Every surrogate
    structure has weight 1 and every DFT structure weight ``weight_dft``: a DFT structure
    counts in the loss exactly as ``weight_dft`` copies of itself would (energy term per
    structure, force term per atom, see ``to_dataframe``).  With S surrogate and D DFT
    structures of similar size, DFT data carry ``D*w / (S + D*w)`` of the loss.

``residual``
    Fit a correction ACE to ``DFT - base`` (energy and force residuals) on the DFT
    structures, starting from zero, without ZBL core, with its own reference energies
    (a per-atom constant offset between surrogate and DFT goes into E0), and ship
    ``base + correction``.

Can base + correction be ONE potential file?  Not by adding coefficients: pacemaker's
FinnisSinclairShiftedScaled embedding is non-linear (``E_i = rho_1 + F(rho_2)``, F ~ sqrt),
so ``E_base + E_corr`` is not the ACE of the summed coefficients.  But ACE's atomic energy is
a sum over densities, ``E_i = sum_p F_p(rho_i^p)``, each density with its own embedding, and
each density a linear expansion in the basis.  So base + correction is exactly an ACE with
the densities of both (ndensity = 2 + 2), the radial functions of both (the correction's
radial channels n are renumbered after the base's; rank-1 functions use the shared radial
basis g_k directly and are merged), the embedding parameters of both, E0 = E0_base + E0_corr,
and the base's inner cutoff/ZBL core.  Same elements, cutoff and radial basis are required.
:func:`merge_ace` builds that file; :func:`residual` checks it numerically against
``base + correction`` evaluated separately (energies and forces) and ships ONE
``.yaml``/``.yace`` usable by ASE (pyace) and LAMMPS ``pair_style pace``.  Only if the check
fails (not seen) it ships the pair: ``.yace`` = base, ``.correction.yace`` = correction,
to be used as ``pair_style hybrid/overlay pace pace`` / ASE ``SumCalculator``.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import yaml

from ..core.models import Label, LabelledSet, TrainedModel
from .pacemaker import (PacemakerError, PacemakerTrainer, _run, _tool, _write_df, build_active_set,
                        model_e0, predict, reference_energies, rmse, set_yace_e0, to_dataframe)

log = logging.getLogger(__name__)

MODES = ("weighted_refit", "residual")


def delta_fit(trainer: PacemakerTrainer, base: TrainedModel, surrogate: LabelledSet,
              dft: LabelledSet, *, mode: str, weight_dft: float, workdir: str,
              name: str | None = None, correction_functions: int | None = None,
              weight_dft_forces: float | None = None) -> TrainedModel:
    """Delta-learn ``base`` onto the DFT labels; see the module docstring for the modes.

    ``weight_dft`` (weighted_refit): weight of one DFT structure relative to one surrogate
    structure (a DFT structure counts as ``weight_dft`` surrogate structures);
    ``weight_dft_forces`` the same for the force term (default ``weight_dft``).  Unused by
    ``residual`` (the correction is fitted on DFT data only).
    ``correction_functions`` (residual): functions per element of the correction
    (default: the trainer's).  The returned metrics hold ``dft_rmse_*_before`` (base) and
    ``dft_rmse_*_after`` on the DFT set, and ``delta_mode`` (0 refit, 1 residual).
    """
    if mode not in MODES:
        raise ValueError(f"delta mode must be one of {MODES}, got {mode!r}")
    dft = dft.usable()
    if len(dft) == 0:
        raise PacemakerError("delta_fit: no usable DFT labels")
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    name = name or f"{base.name}-{mode}"
    before = rmse(predict(base, dft.structures, str(wd / "eval_base")), dft)
    if mode == "weighted_refit":
        if weight_dft <= 0:
            raise ValueError("weight_dft must be > 0")
        model = weighted_refit(trainer, base, surrogate, dft, weight_dft=weight_dft,
                               from_scratch=not is_prior(before, dft),
                               weight_dft_forces=weight_dft_forces, workdir=str(wd / "refit"), name=name)
    else:
        model = residual(trainer, base, surrogate, dft, workdir=str(wd / "residual"),
                         name=name, correction_functions=correction_functions)
    after = rmse(predict(model, dft.structures, str(wd / "eval_delta")), dft)
    for k, v in before.items():
        model.metrics[f"dft_{k}_before"] = v
    for k, v in after.items():
        model.metrics[f"dft_{k}_after"] = v
    model.metrics["n_dft"] = float(len(dft))
    return model


def is_prior(base_error: dict, dft: LabelledSet) -> bool:
    """Whether the base ACE is a usable starting point on the DFT cells: its force RMSE
    there below the RMS of the DFT forces themselves (the error of predicting zero force).
    A base that never saw such cells can be off by eV/A (measured on Cu with
    ``mace.md.include_pool: false``: 3-50 eV/A on the 20 DFT picks, against 20-140 meV/A
    with the pool), and a refit continued from it does not recover within the step-7
    budget (final ACE 21-30 meV/atom, 64-100 meV/A against 1.5-3.0 / 5.6-8.6)."""
    scale = 1e3 * float(np.sqrt(np.mean(np.concatenate([np.ravel(lab.forces) for lab in dft.labels]) ** 2)))
    return base_error["rmse_f_meV_A"] <= scale


def select_weight_dft(trainer: PacemakerTrainer, base: TrainedModel, surrogate: LabelledSet,
                      dft: LabelledSet, candidates: list[float], workdir: str, *, folds: int = 3,
                      seed: int = 0, weight_dft_forces: float | None = None) -> tuple[float, list[dict]]:
    """``weight_dft`` by K-fold cross-validation on the DFT labels: each candidate refits the
    base on the surrogate set + K-1 DFT folds and is scored on the held-back fold (the
    scoring of ``select_finetune_loss``). Returns the chosen weight and the table."""
    from .finetune_selection import ENERGY, FORCES, select_finetune_loss

    def fit(overrides, train, valid, wd):
        m = delta_fit(trainer, base, surrogate, train, mode="weighted_refit", weight_dft=overrides["weight_dft"],
                      weight_dft_forces=weight_dft_forces, workdir=wd)
        err = rmse(predict(m, valid.structures, str(Path(wd) / "valid")), valid)
        m.metrics[ENERGY], m.metrics[FORCES] = err["rmse_e_meV_atom"], err["rmse_f_meV_A"]
        return m

    chosen, table = select_finetune_loss(fit, dft, [{"weight_dft": float(w)} for w in candidates], workdir,
                                         folds=folds, seed=seed, what="weight_dft")
    return float(chosen["weight_dft"]), table


# ----------------------------------------------------------------------------------------
def weighted_refit(trainer: PacemakerTrainer, base: TrainedModel, surrogate: LabelledSet,
                   dft: LabelledSet, *, weight_dft: float, workdir: str,
                   name: str = "ace-delta", weight_dft_forces: float | None = None,
                   from_scratch: bool = False) -> TrainedModel:
    """Continue ``base`` (``-p``, its reference energies) on surrogate + DFT data, each DFT
    structure weighted ``weight_dft`` x a surrogate structure (its forces
    ``weight_dft_forces`` x, default the same). ``from_scratch`` fits the same data without
    the base (``delta_fit`` does when the base is no prior, see ``is_prior``)."""
    if from_scratch:
        log.warning("the base ACE is no prior on the DFT cells (its force error there exceeds the "
                    "DFT forces' own RMS; it never saw such structures: is mace.md.include_pool off?); "
                    "fitting surrogate + DFT data from scratch instead of continuing it")
    wf = float(weight_dft if weight_dft_forces is None else weight_dft_forces)
    if wf <= 0:
        raise ValueError("weight_dft_forces must be > 0")
    sur = surrogate.usable()
    data = sur + dft
    weights = np.concatenate([np.ones(len(sur)), np.full(len(dft), float(weight_dft))])
    fweights = np.concatenate([np.ones(len(sur)), np.full(len(dft), wf)])
    model = trainer.fit(data, workdir, initial=None if from_scratch else base, name=name, weights=weights, force_weights=fweights,
                        max_iterations=trainer.delta_max_iterations)
    n_sur = sum(len(a) for a in sur.structures)
    n_dft = sum(len(a) for a in dft.structures)
    model.metrics.update({
        "delta_mode": 0.0, "weight_dft": float(weight_dft), "weight_dft_forces": wf,
        "refit_from_scratch": float(from_scratch),
        # fraction of the (normalised) energy and force loss terms carried by DFT data
        "dft_energy_loss_share": float(len(dft) * weight_dft / (len(sur) + len(dft) * weight_dft)),
        "dft_force_loss_share": float(n_dft * wf / (n_sur + n_dft * wf))})
    return model


# ----------------------------------------------------------------------------------------
def residual(trainer: PacemakerTrainer, base: TrainedModel, surrogate: LabelledSet,
             dft: LabelledSet, *, workdir: str, name: str = "ace-delta",
             correction_functions: int | None = None) -> TrainedModel:
    """Fit an ACE to DFT - base on the DFT structures and ship base + correction as one
    potential (see module docstring); files ``.yaml``, ``.yace``, ``.asi`` (the sum),
    ``.base.yaml``, ``.correction.yaml``, ``.correction.yace`` and ``.usage.txt``."""
    t0 = time.time()
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    base_pred = predict(base, dft.structures, str(wd / "base_eval"))
    res_labels = []
    for ref, bp in zip(dft.labels, base_pred):
        stress = (ref.stress - bp.stress) if ref.stress is not None and bp.stress is not None else None
        res_labels.append(Label(energy=ref.energy - bp.energy, forces=ref.forces - bp.forces,
                                stress=stress))
    res = LabelledSet(list(dft.structures), res_labels)
    e0_corr = reference_energies(res, trainer.elements)

    base_doc = yaml.safe_load(base.files[".yaml"])
    bond = next(b for b in base_doc["species"] if "rcutij" in b)
    cfg = trainer.cfg.model_copy(deep=True)
    shape = {"potential": {"bonds": {"ALL": {
        "radbase": bond["radbase"], "radparameters": list(bond["radparameters"]),
        "rcut": float(bond["rcutij"]), "dcut": float(bond["dcutij"]),
        "NameOfCutoffFunction": bond["NameOfCutoffFunctionij"]}}}}
    extra = copy.deepcopy(dict(cfg.extra_input))
    extra.setdefault("potential", {}).setdefault("bonds", {})
    extra["potential"]["bonds"] = {**extra["potential"]["bonds"], **shape["potential"]["bonds"]}
    if correction_functions:
        extra["potential"].setdefault("functions", {})["number_of_functions_per_element"] = int(
            correction_functions)
    cfg.extra_input = extra
    ctrainer = PacemakerTrainer(cfg, trainer.elements, e0=e0_corr, gpu=trainer.gpu,
                                max_iterations=trainer.delta_max_iterations,
                                threads=trainer.threads, core_repulsion=False,
                                timeout_s=trainer.timeout_s, batch_size=trainer.batch_size,
                                seed=trainer.seed)
    corr = ctrainer.fit(res, str(wd / "correction"), name=f"{name}.correction")

    e0_base = model_e0(base)
    e0_sum = {el: e0_base.get(el, 0.0) + e0_corr.get(el, 0.0) for el in trainer.elements}
    mdir = wd / "merged"
    mdir.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {".base.yaml": base.files[".yaml"],
                               ".correction.yaml": corr.files[".yaml"],
                               ".correction.yace": corr.files[".yace"]}
    env = trainer.env()
    merged_ok, max_dev = False, float("nan")
    try:
        merged_text = merge_ace(base.files[".yaml"].decode(), corr.files[".yaml"].decode(), e0_sum)
        (mdir / "merged.yaml").write_text(merged_text)
        max_dev = check_merged(mdir / "merged.yaml", base.files[".yaml"], corr.files[".yaml"],
                               dft.structures + surrogate.usable().structures[:20], mdir)
        merged_ok = max_dev < 1e-6
        if not merged_ok:
            log.warning("merged ACE differs from base + correction by %.3g eV: shipping the pair",
                        max_dev)
    except (ValueError, KeyError, RuntimeError) as err:
        log.warning("could not merge base and correction (%s): shipping the pair", err)

    metrics = {f"correction_{k}": v for k, v in corr.metrics.items()
               if k.startswith(("train_", "pacemaker_", "n_", "iterations", "seconds"))}
    metrics.update({f"e0_{el}": v for el, v in e0_sum.items()})
    metrics.update({"delta_mode": 1.0, "single_file": float(merged_ok),
                    "merge_max_deviation_eV": max_dev})
    if merged_ok:
        _run([_tool("pace_yaml2yace"), "merged.yaml", "-o", "merged.yace"], mdir, env,
             "pace_yaml2yace.out", trainer.timeout_s)
        set_yace_e0(mdir / "merged.yace", e0_sum)
        files[".yaml"] = (mdir / "merged.yaml").read_bytes()
        files[".yace"] = (mdir / "merged.yace").read_bytes()
        # active set of the shipped potential over everything it was fitted to
        both = surrogate.usable() + dft
        _write_df(to_dataframe(both, e0_sum), mdir / "activeset_data.pckl.gzip")
        asi = build_active_set(mdir / "merged.yaml", mdir / "activeset_data.pckl.gzip", env,
                               trainer.timeout_s)
        if asi is not None:
            files[".asi"] = asi
        usage = (f"{name}: ONE ACE potential = base + residual correction (ndensity summed).\n"
                 f"LAMMPS: pair_style pace\n        pair_coeff * * {name}.yace "
                 f"{' '.join(trainer.elements)}\n"
                 f"ASE:    from pyace import PyACECalculator; calc = PyACECalculator('{name}.yace')\n"
                 f"Energies are total energies (E0 = base E0 + correction E0 in the .yace).\n"
                 f"Extrapolation grade: PyACECalculator('{name}.yaml') + set_active_set('{name}.asi')"
                 f" (the .yaml gives energies relative to E0: {json.dumps(e0_sum)}).\n")
    else:
        files[".yaml"] = base.files[".yaml"]
        files[".yace"] = base.files[".yace"]
        if ".asi" in base.files:
            files[".asi"] = base.files[".asi"]
        els = " ".join(trainer.elements)
        usage = (f"{name}: base + correction as TWO potentials (sum them).\n"
                 f"LAMMPS: pair_style hybrid/overlay pace pace\n"
                 f"        pair_coeff * * pace 1 {name}.yace {els}\n"
                 f"        pair_coeff * * pace 2 {name}.correction.yace {els}\n"
                 f"ASE:    SumCalculator([PyACECalculator('{name}.yace'), "
                 f"PyACECalculator('{name}.correction.yace')])  (pyacemaker_hpc: ace_calculator)\n")
    metrics["has_active_set"] = float(".asi" in files)
    metrics["seconds"] = time.time() - t0
    files[".usage.txt"] = usage.encode()
    return TrainedModel(name=name, kind="ace", files=files, metrics=metrics)


# ----------------------------------------------------------------------------------------
def _central(func_type: str) -> str:
    return func_type.split()[0]


def merge_ace(base_yaml: str, corr_yaml: str, e0: dict[str, float] | None = None) -> str:
    """One B-basis YAML whose energy is exactly base + correction (non-linear embeddings).

    Densities are concatenated per element (ndensity_b + ndensity_c, fs parameters
    concatenated); the correction's radial channels n (rank >= 2) are renumbered after the
    base's (offset = the base's largest nradmax) and its radial coefficients placed there;
    rank-1 functions (which use the shared radial basis g_k directly) of the same (type, n)
    are merged into one function with both coefficient sets.  The inner cutoff / ZBL core
    is the base's.  Raises ValueError when the two are not compatible (elements, cutoffs,
    radial basis, embedding type).
    """
    b = yaml.safe_load(base_yaml)
    c = yaml.safe_load(corr_yaml)
    bblocks = {blk["speciesblock"]: blk for blk in b["species"]}
    cblocks = {blk["speciesblock"]: blk for blk in c["species"]}
    if set(bblocks) != set(cblocks):
        raise ValueError(f"different species blocks: {sorted(bblocks)} vs {sorted(cblocks)}")
    if b.get("global") != c.get("global"):
        raise ValueError("different global settings (deltaSplineBins)")
    nd_b = {k: int(v["ndensityi"]) for k, v in bblocks.items() if "ndensityi" in v}
    nd_c = {k: int(v["ndensityi"]) for k, v in cblocks.items() if "ndensityi" in v}
    offset = max(int(v["nradmaxi"]) for v in bblocks.values() if "nradmaxi" in v)

    out = copy.deepcopy(b)
    out_blocks = []
    for blk in out["species"]:
        key = blk["speciesblock"]
        cb = cblocks[key]
        if "ndensityi" in blk:
            if blk["npoti"] != cb["npoti"]:
                raise ValueError(f"{key}: embeddings differ ({blk['npoti']} vs {cb['npoti']})")
            # rho_core_cut/drho_core_cut: the base's (its energy cutoff acts on the hard-core
            # density, which is zero for the ZBL core and for a correction without core)
            blk["ndensityi"] = nd_b[key] + nd_c[key]
            blk["parameters"] = list(blk["parameters"]) + list(cb["parameters"])
        if "nradmaxi" in blk:
            for k in ("rcutij", "dcutij", "NameOfCutoffFunctionij", "radbase", "radparameters"):
                if blk.get(k) != cb.get(k):
                    raise ValueError(f"{key}: {k} differs ({blk.get(k)} vs {cb.get(k)})")
            crad_b = np.asarray(blk["radcoefficients"], dtype=float)
            crad_c = np.asarray(cb["radcoefficients"], dtype=float)
            nr_c = int(cb["nradmaxi"])
            lmax = max(int(blk["lmaxi"]), int(cb["lmaxi"]))
            nbase = max(int(blk["nradbaseij"]), int(cb["nradbaseij"]))
            crad = np.zeros((offset + nr_c, lmax + 1, nbase))
            if crad_b.size:  # empty ([]) when a potential has rank-1 functions only here
                crad[:crad_b.shape[0], :crad_b.shape[1], :crad_b.shape[2]] = crad_b
            if crad_c.size:
                crad[offset:offset + crad_c.shape[0], :crad_c.shape[1], :crad_c.shape[2]] = crad_c
            blk["nradmaxi"] = offset + nr_c
            blk["lmaxi"] = lmax
            blk["nradbaseij"] = nbase
            blk["radcoefficients"] = crad.tolist()
        # functions
        funcs = []
        rank1 = {}
        for f in blk.get("nbody", []) or []:
            el = _central(f["type"])
            g = dict(f)
            g["c"] = list(f["c"]) + [0.0] * nd_c[el]
            funcs.append(g)
            if len(f["nr"]) == 1:
                rank1[(f["type"], tuple(f["nr"]), tuple(f["nl"]))] = g
        for f in cb.get("nbody", []) or []:
            el = _central(f["type"])
            if len(f["nr"]) == 1:
                k = (f["type"], tuple(f["nr"]), tuple(f["nl"]))
                if k in rank1:
                    g = rank1[k]
                    g["c"] = list(g["c"][:nd_b[el]]) + list(f["c"])
                    continue
                g = dict(f)
            else:
                g = dict(f)
                g["nr"] = [int(n) + offset for n in f["nr"]]
            g["c"] = [0.0] * nd_b[el] + list(f["c"])
            funcs.append(g)
        if funcs:
            blk["nbody"] = funcs
        out_blocks.append(blk)
    out["species"] = out_blocks
    meta = {str(k): str(v) for k, v in (out.get("metadata") or {}).items()}
    if e0 is not None:
        meta["reference_energy"] = json.dumps({k: float(v) for k, v in e0.items()})
    meta["pyacemaker_delta"] = "residual: base + correction merged (densities concatenated)"
    out["metadata"] = meta
    return yaml.safe_dump(out, sort_keys=False, default_flow_style=None, width=10 ** 6)


def check_merged(merged_yaml: Path, base_yaml: bytes, corr_yaml: bytes, structures,
                 workdir: Path) -> float:
    """Largest |difference| (eV for energies, eV/A for forces) between the merged potential
    and base + correction evaluated separately, over ``structures`` whose atoms all lie
    outside the base's inner (ZBL) cutoff region, where the two are defined to agree."""
    from ase.neighborlist import neighbor_list
    from pyace import ACEBBasisSet, BBasisConfiguration, PyACECalculator

    (workdir / "check_base.yaml").write_bytes(base_yaml)
    (workdir / "check_corr.yaml").write_bytes(corr_yaml)
    BBasisConfiguration(str(merged_yaml))  # parses / validates
    calcs = [PyACECalculator(ACEBBasisSet(str(p))) for p in
             (merged_yaml, workdir / "check_base.yaml", workdir / "check_corr.yaml")]
    doc = yaml.safe_load(base_yaml)
    r_core = max((float(blk.get("r_in", 0.0)) + float(blk.get("delta_in", 0.0))
                  for blk in doc["species"] if "rcutij" in blk), default=0.0)
    dev, n = 0.0, 0
    for at in structures:
        if len(at) > 1 and r_core > 0:
            d = neighbor_list("d", at, r_core)
            if len(d):
                continue
        res = []
        for calc in calcs:
            a = at.copy()
            a.calc = calc
            res.append((a.get_potential_energy(), a.get_forces()))
        dev = max(dev, abs(res[0][0] - res[1][0] - res[2][0]),
                  float(np.max(np.abs(res[0][1] - res[1][1] - res[2][1]))))
        n += 1
    if n == 0:
        raise RuntimeError("no structure outside the inner cutoff to check the merge on")
    return dev
