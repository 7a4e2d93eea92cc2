"""Step 2: MACE-committee uncertainty over the step-1 selection; the most uncertain
structures (above the ``uncertainty_threshold`` quantile) go to DFT.

``uncertainty_threshold`` is a quantile, not an absolute number: with committee force
disagreement u_i (max over atoms of the norm of the per-component std, eV/A) over the N
selected structures, structure i goes to DFT when u_i >= quantile(u, threshold). 0.8 sends
the most uncertain 20 % (at least one). A quantile stays meaningful across systems and
committees whose absolute spreads differ by orders of magnitude.

``mace.dft_pick: stratified`` keeps that count but spreads it: the step-1 selection is
clustered in descriptor space (DIRECT's weighted PCA space and BIRCH) into as many
clusters as there are DFT jobs, and the most uncertain structure of each cluster goes to
DFT. The plain top quantile piles every call onto the most distorted cells (measured: mean
largest DFT force 6.1 vs 2.8 eV/A at random), leaving the region near equilibrium, where
most of the held-out structures and MD frames lie, without one DFT energy to anchor the
teacher; one pick per cluster anchors every region while still choosing by uncertainty.

``mace.dft_pick: random`` is the control of the uncertainty benchmark: as many picks,
drawn uniformly (seeded) from the step-1 selection, the committee ignored.

``mace.volume_anchors`` (at least 4 picks; not for the random control) swaps the least
uncertain picks for the selection's most compressed and most expanded cell, so the few DFT
energies span the equation of state. Uncertainty favours distorted, compressed cells
(large forces): on Cu at 10 calls a seed whose picks stopped at 12.0 A^3/atom left its
final ACE 34 meV/atom low on the held-out cells above 12.8, where the teacher keeps the
foundation's systematic E(V) error. "Expanded" is the median first-shell bond length in
units of the pair's covalent radii (``bond_scale``), not the volume per atom, which a
vacancy inflates.
"""
from __future__ import annotations

import logging

import numpy as np

from ..core.models import LabelledSet, Uncertainty, structure_uid
from ..parallel import TaskFailed
from .context import Step, StepContext, digest
from .labelling import dft_settings_key, existing_data_key, import_existing_dft, label_set_with_dft
from .s1_sampling import seed_structures
from .tasks import uncertainty_task

log = logging.getLogger("pyacemaker_hpc")
CHUNK = 50


def committee_models(ctx: StepContext) -> tuple[str, ...]:
    from ..oracle.mace_surrogate import resolve_model

    names = [ctx.cfg.distillation.step3_mace_finetune.base_model, *ctx.cfg.mace.committee]
    return tuple(resolve_model(n) for n in names)


def committee_uncertainty(ctx: StepContext, models: tuple, structures: list) -> Uncertainty:
    from ..oracle.mace_surrogate import pick_device

    cfg = ctx.cfg
    chunks = [structures[i:i + CHUNK] for i in range(0, len(structures), CHUNK)]
    out = {}

    def on_result(k, res):
        if isinstance(res, TaskFailed):
            raise RuntimeError(f"committee evaluation failed:\n{res.error}")
        out[k] = res

    args = (models, pick_device(cfg.mace.device), cfg.mace.default_dtype, cfg.mace.batch_size)
    ctx.farm.map("mace", [(k, uncertainty_task, (*args, c)) for k, c in enumerate(chunks)], on_result,
                 label="committee uncertainty")
    return Uncertainty(np.concatenate([out[k].energy_std for k in range(len(chunks))]),
                       np.concatenate([out[k].force_std for k in range(len(chunks))]))


def pick_uncertain(unc: Uncertainty, threshold: float) -> np.ndarray:
    """Indices with force spread at or above the ``threshold`` quantile (ties broken by
    energy spread), most uncertain first; at least one."""
    u = unc.force_std
    if len(u) == 0:
        return np.zeros(0, dtype=int)
    order = np.lexsort((-unc.energy_std, -u))
    n = max(1, int(round(len(u) * (1.0 - threshold))))
    if np.ptp(u) == 0:
        log.warning("[step2] the committee agrees everywhere (one member, or identical ones): "
                    "uncertainty cannot rank structures; taking the first %d of the selection", n)
    return order[:n]


def pick_stratified(unc: Uncertainty, threshold: float, X: np.ndarray, seed: int,
                    pca_variance: float = 0.95) -> np.ndarray:
    """As many picks as ``pick_uncertain``, one per descriptor-space cluster of ``X`` (the
    most uncertain of each), most uncertain first; topped up by uncertainty if BIRCH
    finds fewer clusters."""
    from ..structure_generator.direct import DirectSelector

    top = pick_uncertain(unc, threshold)
    n = len(top)
    if n <= 1 or n >= len(X) or np.ptp(unc.force_std) == 0:
        return top
    sel = DirectSelector(pca_variance=pca_variance)
    W = sel.weighted_space(np.asarray(X, dtype=np.float64))
    order = np.random.default_rng(seed).permutation(len(W))
    labels = np.empty(len(W), dtype=int)
    labels[order] = sel._birch(W[order], n)
    rank = np.empty(len(W), dtype=int)
    rank[np.lexsort((-unc.energy_std, -unc.force_std))] = np.arange(len(W))  # 0 = most uncertain
    picks = [min(np.flatnonzero(labels == lab), key=lambda i: rank[i]) for lab in np.unique(labels)]
    picks += [i for i in np.argsort(rank) if i not in set(picks)][: max(0, n - len(picks))]
    return np.array(sorted(picks[:n], key=lambda i: rank[i]), dtype=int)


def pick_direct(unc: Uncertainty, threshold: float, X: np.ndarray, seed: int,
                pca_variance: float = 0.95) -> np.ndarray:
    """As many picks as ``pick_uncertain``, by DIRECT on the step-1 selection's descriptors:
    one per BIRCH cluster, the member nearest the cluster's centre (committee ignored)."""
    from ..structure_generator.direct import DirectSelector

    n = len(pick_uncertain(unc, threshold))
    return DirectSelector(pca_variance=pca_variance).select(np.asarray(X, dtype=np.float64), n, seed)


def pick_random(unc: Uncertainty, threshold: float, seed: int) -> np.ndarray:
    """As many picks as ``pick_uncertain``, uniformly at random (the benchmark's control)."""
    n = len(pick_uncertain(unc, threshold))
    return np.sort(np.random.default_rng(seed + 2).choice(len(unc.force_std), size=n, replace=False))


def first_shell(atoms) -> np.ndarray:
    """First-shell bond lengths in units of each pair's covalent radii sum (bonds within 1.3x
    each atom's shortest): rattling and shear spread them, strain moves them together."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    r = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, float(4.0 * r.max()))
    x = d / (r[i] + r[j])
    nearest = np.full(len(atoms), np.inf)
    np.minimum.at(nearest, i, x)
    return x[x < 1.3 * nearest[i]]


def bond_scale(atoms, shell: np.ndarray | None = None) -> float:
    """Median first-shell bond length over the covalent radii: below 1 compressed, above
    expanded. Rattling does not pass for compression; vacancies and composition do not count."""
    x = first_shell(atoms) if shell is None else shell
    return float(np.median(x)) if len(x) else float("nan")  # no bonds: no scale


def bond_spread(atoms, shell: np.ndarray | None = None) -> float:
    """Relative spread (std / median) of the first-shell bond lengths: 0 for an ideal or
    isotropically strained lattice, growing with rattling and shear."""
    x = first_shell(atoms) if shell is None else shell
    return float(np.std(x) / np.median(x)) if len(x) else float("nan")


def one_per_composition(structures: list) -> list:
    """The first structure of each distinct composition (element fractions), in order."""
    seen, out = set(), []
    for a in structures:
        sym = a.get_chemical_symbols()
        key = tuple(sorted((e, round(sym.count(e) / len(sym), 6)) for e in set(sym)))
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


def pristine_ends(structures: list, seeds: list) -> list:
    """The seed nearest in composition to the selection's most compressed and most expanded
    cell, scaled isotropically to that cell's bond scale: the equation of state's two ends
    without the rattling and shear that make uncertain cells stand apart from ideal ones."""
    scale = np.array([bond_scale(a) for a in structures])
    seeds = [a for a in seeds if np.isfinite(bond_scale(a))]
    if not seeds or np.isfinite(scale).sum() < 2:
        return []
    elements = sorted({e for a in list(structures) + seeds for e in a.get_chemical_symbols()})

    def fractions(a):
        sym = a.get_chemical_symbols()
        return np.array([sym.count(e) / len(sym) for e in elements])

    out = []
    for i in dict.fromkeys([int(np.nanargmin(scale)), int(np.nanargmax(scale))]):
        seed = min(seeds, key=lambda a: float(np.abs(fractions(a) - fractions(structures[i])).sum()))
        f = scale[i] / bond_scale(seed)
        cell = seed.copy()
        cell.set_cell(seed.cell * f, scale_atoms=True)
        cell.info = {"provenance": f"{seed.info.get('provenance', 'seed')}:scaled{f:.4f}"}
        out.append(cell)
    return out


def with_volume_anchors(idx: np.ndarray, structures: list, min_picks: int = 4,
                        equilibrium: list | None = None, seed_cells: list | None = None,
                        end_cells: list | None = None) -> np.ndarray:
    """``idx`` (most uncertain first) with its least uncertain entries swapped for the
    selection's most compressed and most expanded cell (by ``bond_scale``) and, given
    ``equilibrium`` structures (the seeds), the cell closest to an ideal lattice at their
    median bond scale (``bond_spread`` and relative scale, in quadrature); same count.
    ``seed_cells`` (structures outside the selection) join as indices ``len(structures) + k``,
    as many as keep at least half the picks the committee's; ``end_cells``
    (``pristine_ends``) take the place of the selection's two ends, as indices after those."""
    picks = [int(i) for i in idx]
    if len(picks) < min_picks or len(structures) <= len(picks):
        return np.asarray(picks, dtype=int)
    shells = [first_shell(a) for a in structures]  # one neighbour list per cell
    scale = np.array([bond_scale(a, x) for a, x in zip(structures, shells)])
    if np.isfinite(scale).sum() < 2:
        return np.asarray(picks, dtype=int)
    anchors = [int(np.nanargmin(scale)), int(np.nanargmax(scale))]
    if end_cells:
        anchors = [len(structures) + len(seed_cells or ()) + k for k in range(len(end_cells))]
    ref = np.nanmedian([bond_scale(a) for a in equilibrium]) if equilibrium else np.nan
    if np.isfinite(ref):  # distance from an ideal lattice at the seeds' bond scale
        off = np.hypot([bond_spread(a, x) for a, x in zip(structures, shells)], scale / ref - 1.0)
        anchors.append(int(np.nanargmin(off)))
    anchors = list(dict.fromkeys(anchors))
    n_seeds = min(len(seed_cells or ()), max(0, len(picks) // 2 - len(anchors)))
    anchors += [len(structures) + k for k in range(n_seeds)]
    missing = [a for a in anchors if a not in picks]
    droppable = [i for i in picks if i not in anchors]
    dropped = set(droppable[len(droppable) - len(missing):])  # the least uncertain non-anchors
    return np.asarray([i for i in picks if i not in dropped] + missing, dtype=int)


def labels_digest(ls: LabelledSet) -> str:
    """Step 2's output identity: the structures, their status *and* their values. With the
    uids and statuses alone, new DFT settings that change the labels but not the picks left
    steps 3-7 trained on the old labels and taken for up to date."""
    def values(x):
        return None if x is None else np.round(np.asarray(x, dtype=float), 10).ravel().tolist()

    return digest([[a.info["uid"], lab.status, values(lab.energy), values(lab.forces), values(lab.stress)]
                   for a, lab in zip(ls.structures, ls.labels)])


class ActiveLearning(Step):
    name = "step2_active_learning"

    def inputs(self, ctx):
        cfg = ctx.cfg
        return {"step2": cfg.section_dict("distillation.step2_active_learning"), "pick": cfg.mace.dft_pick,
                "anchors": cfg.mace.volume_anchors,
                **({"equilibrium_anchor": cfg.mace.equilibrium_anchor} if cfg.mace.equilibrium_anchor else {}),  # off: hash as before
                "committee": [cfg.distillation.step3_mace_finetune.base_model, *cfg.mace.committee],
                "dft": dft_settings_key(ctx), "existing": existing_data_key(ctx),
                "upstream": ctx.output_hash("step1_sampling")}

    def stale_outputs(self, ctx):
        return ["uncertainty/selected"]

    def run(self, ctx):
        cfg, camp = ctx.cfg, ctx.camp
        selected = camp.read_structures("selected")
        if ctx.resuming and camp.exists("uncertainty/selected/force_std"):
            unc = camp.read_uncertainty("selected")
        else:
            unc = committee_uncertainty(ctx, committee_models(ctx), selected)
            camp.write_uncertainty("selected", unc)
        threshold = cfg.distillation.step2_active_learning.uncertainty_threshold
        if cfg.mace.dft_pick in ("stratified", "direct"):
            X = camp.read_array("descriptors/pool")[camp.read_array("descriptors/selected_index")]
            pick = pick_stratified if cfg.mace.dft_pick == "stratified" else pick_direct
            idx = pick(unc, threshold, X, cfg.seed, cfg.descriptors.pca_variance)
        elif cfg.mace.dft_pick == "random":
            idx = pick_random(unc, threshold, cfg.seed)
        else:
            idx = pick_uncertain(unc, threshold)
        anchor, seeds = cfg.mace.equilibrium_anchor, seed_structures(cfg)
        seed_cells = one_per_composition(seeds) if anchor == "seeds" else []
        ends = pristine_ends(selected, seeds) if cfg.mace.volume_anchors == "pristine" else []
        if cfg.mace.volume_anchors and cfg.mace.dft_pick != "random":  # the control stays uniform
            idx = with_volume_anchors(idx, selected, seed_cells=seed_cells, end_cells=ends,
                                      equilibrium=seeds if anchor is True else None)
        log.info("[step2] committee force spread: median %.3f, max %.3f eV/A; %d structures to DFT",
                 float(np.median(unc.force_std)), float(unc.force_std.max()), len(idx))
        candidates = list(selected) + seed_cells + ends
        in_sel = idx[idx < len(selected)]
        camp.write_structures("dft", [candidates[i] for i in idx])
        camp.write_array("uncertainty/dft_index", idx)
        ls = label_set_with_dft(ctx, "dft")
        existing = import_existing_dft(ctx)
        if len(existing):  # the user's own DFT labels join the training set, uncomputed
            known = {a.info["uid"] for a in ls.structures}
            keep = [i for i, a in enumerate(existing.structures) if structure_uid(a) not in known]
            ls = LabelledSet([existing.structures[i] for i in keep] + ls.structures,
                             [existing.labels[i] for i in keep] + ls.labels)
            camp.write_structures("dft", ls.structures)
            camp.init_labels("dft", "dft", keep_existing=False)
            camp.put_labels("dft", "dft", dict(enumerate(ls.labels)))
        counts = camp.label_counts("dft", "dft")
        camp.write_json("metrics/step2_active_learning", {
            "n_dft": len(ls), "n_done": counts["done"], "n_failed": counts["failed"],
            "n_existing": len(existing),
            "n_seed_anchors": int(np.sum((idx >= len(selected)) & (idx < len(selected) + len(seed_cells)))),
            "force_std_threshold": float(unc.force_std[in_sel].min()) if len(in_sel) else None})
        if counts["done"] == 0:
            raise RuntimeError("every DFT calculation failed: see /labels/dft/dft/error in the campaign")
        return labels_digest(ls)
