"""Pacemaker (python-ace) behind the Trainer contract.

One fit = one ``pacemaker input.yaml`` process in its own work directory (TensorFlow stays
out of the orchestrator's address space), then ``pace_yaml2yace`` and ``pace_activeset``.
The result is a :class:`TrainedModel` holding the files as bytes:

``.yaml``  pacemaker's B-basis potential (energies relative to the reference energies E0,
           which pacemaker keeps in its ``metadata: reference_energy``),
``.yace``  the same potential for LAMMPS ``pair_style pace`` and pyace, with the E0 of every
           element written into its ``E0:`` line so it returns total energies on the scale
           of the training labels,
``.asi``   the active set (D-optimality) for extrapolation grades (may be missing when
           pace_activeset could not build one; ``metrics['has_active_set']`` says which).

Facts this module relies on (read in python-ace 0.4.0rc1's source, tried here):

* ``w_energy`` (one per structure) and ``w_forces`` (one per atom) columns of the data
  frame are used as given when both are present ("Both weighting columns ... found"),
  then normalised so that all ``w_energy`` sum to 1 and all ``w_forces`` (every atom of
  every structure) sum to 1.  The tensorpot loss is
  ``(1-kappa) * sum_s w_energy_s * (dE_s/N_s)**2 + kappa * sum_s sum_i w_forces_si * |dF_si|**2``.
* ``pacemaker input.yaml -p base.yaml`` continues the same basis; ``-ip`` with an identical
  basis is broken in 0.4.0rc1 (ladder step 0, "bbasisconfig couldn't be None").
* ``data: reference_energy: {El: E0}`` makes ``energy_corrected = energy - sum_i E0(el_i)``;
  the fitted potential predicts ``energy_corrected``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase import Atoms

from ..config import PacemakerCfg, auto_ace_preset
from ..core.models import Label, LabelledSet, TrainedModel
from ..tools.logged_run import run_with_progress

log = logging.getLogger(__name__)

#: functions per element for the presets of ``pacemaker.preset``
PRESET_FUNCTIONS = {"tiny": 10, "small": 30, "medium": 100, "large": 300}

#: basis shape (pacemaker's own template); ``number_of_functions_per_element`` truncates it
FUNCTIONS_SHAPE = {
    "UNARY": {"nradmax_by_orders": [15, 6, 4, 3, 2, 2], "lmax_by_orders": [0, 3, 3, 2, 2, 1]},
    "BINARY": {"nradmax_by_orders": [15, 6, 3, 2, 2, 1], "lmax_by_orders": [0, 3, 2, 1, 1, 0]},
    "TERNARY": {"nradmax_by_orders": [15, 3, 3, 2, 1], "lmax_by_orders": [0, 2, 2, 1, 1]},
    "ALL": {"nradmax_by_orders": [15, 3, 2, 1, 1], "lmax_by_orders": [0, 2, 2, 1, 1]},
}

#: files pacemaker writes into its work directory (its own ``pacemaker -c`` list)
_PACEMAKER_OUTPUTS = [
    "fitting_data_info.csv", "fitting_data_info.pckl.gzip", "test_data_info.pckl.gzip",
    "log.txt", "target_potential.yaml", "current_extended_potential.yaml",
    "output_potential.yaml", "output_potential.yace", "output_potential.asi",
    "ladder_metrics.txt", "cycle_metrics.txt", "metrics.txt", "test_ladder_metrics.txt",
    "test_cycle_metrics.txt", "test_metrics.txt", "train_pred.pckl.gzip", "test_pred.pckl.gzip",
    "train_ef-distributions.png", "test_ef-distributions.png", "pacemaker.out",
]


class PacemakerError(RuntimeError):
    """A pacemaker / pace_yaml2yace run failed; the message ends with the tool's own
    last output lines (its traceback or error message)."""


# ----------------------------------------------------------------------------------------
# data
def reference_energies(ls: LabelledSet, elements: Sequence[str]) -> dict[str, float]:
    """Per-element reference energies E0 (eV/atom) from the labelled set.

    Least squares of the total energies on the composition counts (``E_s ~ sum_el
    n_s,el * E0_el``); for one element this is the mean energy per atom.  An element
    absent from the data gets 0.  Pass the same dict to every fit that must share one
    energy scale (surrogate and DFT labels, base and refit).
    """
    elements = list(elements)
    good = ls.usable()
    if len(good) == 0:
        raise ValueError("reference_energies: no usable labels")
    counts = np.array([[at.get_chemical_symbols().count(el) for el in elements]
                       for at in good.structures], dtype=float)
    e = np.array([lab.energy for lab in good.labels], dtype=float)
    if len(elements) == 1:
        return {elements[0]: float(np.mean(e / counts[:, 0]))}
    sol, *_ = np.linalg.lstsq(counts, e, rcond=None)
    return {el: float(v) for el, v in zip(elements, sol)}


def to_dataframe(ls: LabelledSet, e0: Mapping[str, float], weights: np.ndarray | None = None,
                 force_weights: np.ndarray | None = None):
    """The pandas DataFrame pacemaker reads (``data: filename:``).

    Columns: ``ase_atoms`` (copies, no calculator), ``energy`` (total, eV),
    ``energy_corrected`` (``energy - sum_i e0[el_i]``), ``forces`` (N x 3, eV/A),
    ``NUMBER_OF_ATOMS``, ``name`` (``s<index>``).  With ``weights`` (one non-negative
    number per structure) also ``w_energy = w_s / sum_s w_s`` and ``w_forces`` (one array
    per structure, ``w_s`` for each atom, normalised so that all atoms of all structures
    sum to 1).  These are exactly the weights pacemaker's uniform policy gives a data set
    in which structure ``s`` appears ``w_s`` times: a weight-w structure counts as w copies.
    Pacemaker renormalises the same way, so the columns reach the loss unchanged.
    ``force_weights`` (optional, one per structure) replace ``weights`` in ``w_forces``
    only: a structure's energy and forces can count as different numbers of copies.
    """
    import pandas as pd

    n = len(ls)
    weights = _check_weights(weights, n, "weights")
    force_weights = _check_weights(force_weights, n, "force_weights")
    if force_weights is not None and weights is None:
        raise ValueError("force_weights needs weights (the energy weights)")
    atoms_col, e_col, ec_col, f_col, nat_col = [], [], [], [], []
    for at, lab in zip(ls.structures, ls.labels):
        a = at.copy()
        a.calc = None
        symbols = a.get_chemical_symbols()
        missing = set(symbols) - set(e0)
        if missing:
            raise ValueError(f"no reference energy for {sorted(missing)}")
        atoms_col.append(a)
        e_col.append(float(lab.energy))
        ec_col.append(float(lab.energy) - float(sum(e0[s] for s in symbols)))
        f_col.append(np.asarray(lab.forces, dtype=float).reshape(len(a), 3))
        nat_col.append(len(a))
    df = pd.DataFrame({"ase_atoms": atoms_col, "energy": e_col, "energy_corrected": ec_col,
                       "forces": f_col, "NUMBER_OF_ATOMS": nat_col,
                       "name": [f"s{i}" for i in range(n)]})
    if weights is not None:
        nat = np.asarray(nat_col, dtype=float)
        df["w_energy"] = weights / weights.sum()
        fw = weights if force_weights is None else force_weights
        fnorm = float(np.sum(fw * nat))
        df["w_forces"] = [np.full(int(k), w / fnorm) for w, k in zip(fw, nat)]
    return df


def _check_weights(w, n: int, what: str):
    if w is None:
        return None
    w = np.asarray(w, dtype=float).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"{what} has {w.shape[0]} entries for {n} structures")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or (n and w.sum() <= 0):
        raise ValueError(f"{what} must be finite, non-negative and not all zero")
    return w


def _write_df(df, path: Path) -> None:
    df.to_pickle(str(path), compression="gzip", protocol=4)


# ----------------------------------------------------------------------------------------
# helpers
def _tool(name: str) -> str:
    """A python-ace console script: beside this interpreter first, then on PATH."""
    cand = Path(sys.executable).parent / name
    if cand.is_file():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise PacemakerError(f"{name} not found (is python-ace installed in this environment?)")
    return found


def _deep_merge(base: dict, top: Mapping) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _tail_message(text: str, n: int = 25) -> str:
    """The tool's last error line first, then its last ``n`` meaningful lines."""
    lines = [ln if len(ln) <= 400 else ln[:400] + " ..." for ln in text.splitlines()
             if ln.strip() and set(ln.strip()) - set("^~ ")]  # drop traceback underlines
    last = lines[-1].strip() if lines else "(no output)"
    return f"{last}\n--- last lines of output ---\n" + "\n".join(lines[-n:])


#: pacemaker's iteration counter in its output ("Iteration   #12 ...")
_ITERATION = re.compile(r"Iteration\s+#(\d+)")


def _run(cmd: list[str], cwd: Path, env: dict, log_name: str, timeout: float | None,
         progress: tuple[str, int] | None = None) -> str:
    """Run an argument list in ``cwd``; stdout+stderr go to ``cwd/log_name``; with
    ``progress=(label, max_iterations)`` a fit logs its iteration count and ETA.
    Raises PacemakerError with the tool's last lines on failure."""
    out_path = cwd / log_name
    try:
        if progress is not None:
            code = run_with_progress(cmd, cwd, env, out_path, timeout, label=progress[0],
                                     pattern=_ITERATION, total=progress[1])
            res = subprocess.CompletedProcess(cmd, code)
        else:
            with open(out_path, "w") as fh:
                res = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                     timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PacemakerError(f"{Path(cmd[0]).name} timed out after {timeout} s in {cwd}:\n"
                             + _tail_message(out_path.read_text(errors="replace"))) from None
    text = out_path.read_text(errors="replace")
    if res.returncode != 0:
        raise PacemakerError(f"{Path(cmd[0]).name} failed (exit {res.returncode}) in {cwd}: "
                             + _tail_message(text))
    return text


def _last_metrics_row(path: Path) -> dict[str, float]:
    """Last row of pacemaker's metrics.txt (whitespace table, values in eV units)."""
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        return {}
    head, row = lines[0], lines[-1]
    out = {}
    for k, v in zip(head, row):
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


def set_yace_e0(yace_path: str | Path, e0: Mapping[str, float]) -> None:
    """Write per-element E0 into the ``E0: [...]`` line of a .yace file (in its element
    order).  pyace and LAMMPS ``pair_style pace`` add E0 to every atom's energy."""
    p = Path(yace_path)
    text = p.read_text()
    m = re.search(r"^elements:\s*\[(.*?)\]\s*$", text, flags=re.M)
    if not m:
        raise PacemakerError(f"{p}: no 'elements:' line")
    els = [s.strip().strip("'\"") for s in m.group(1).split(",") if s.strip()]
    vals = ", ".join(repr(float(e0.get(el, 0.0))) for el in els)
    new, k = re.subn(r"^E0:\s*\[.*?\]\s*$", f"E0: [{vals}]", text, count=1, flags=re.M)
    if k == 0:  # older writers omit the line: put it after 'elements:'
        new = text[:m.end()] + f"\nE0: [{vals}]" + text[m.end():]
    p.write_text(new)


def model_e0(model: TrainedModel) -> dict[str, float]:
    """The model's reference energies: ``metrics['e0_<El>']``, else the .yaml metadata."""
    e0 = {k[3:]: float(v) for k, v in model.metrics.items() if k.startswith("e0_")}
    if e0 or ".yaml" not in model.files:
        return e0
    meta = (yaml.safe_load(model.files[".yaml"]) or {}).get("metadata", {}) or {}
    ref = meta.get("reference_energy")
    if isinstance(ref, str):
        try:
            ref = json.loads(ref)
        except json.JSONDecodeError:
            ref = None
    if isinstance(ref, dict):
        return {k: float(v) for k, v in ref.items() if k != "shift"}
    return {}


# ----------------------------------------------------------------------------------------
class PacemakerTrainer:
    """Fits ACE potentials with pacemaker (Trainer protocol).

    ``cfg`` is the ``pacemaker:`` config section; ``elements`` the system's elements.
    Keywords (not config fields): ``e0`` fixes the reference energies of every fit (else:
    the initial model's, else ``cfg.reference_energy`` = auto (least squares on the training
    set) or zero); ``gpu`` leaves CUDA visible (else ``CUDA_VISIBLE_DEVICES=""``);
    ``max_iterations`` / ``delta_max_iterations`` override ``cfg.max_iterations`` /
    ``cfg.delta_max_iterations`` (unset: the fresh fit's budget); ``threads`` sets OMP/TF
    thread counts of the subprocess;
    ``core_repulsion`` adds pacemaker's ``repulsion: auto`` (ZBL core) -- the delta module
    switches it off for residual corrections; ``timeout_s`` bounds one pacemaker run;
    ``batch_size`` is the backend's batch size.
    """

    def __init__(self, cfg: PacemakerCfg, elements: list[str], *, e0: dict | None = None,
                 gpu: bool = False, max_iterations: int | None = None,
                 delta_max_iterations: int | None = None, threads: int | None = None,
                 core_repulsion: bool = True, timeout_s: float | None = None,
                 batch_size: int = 100, seed: int = 42):
        self.cfg = cfg
        self.elements = sorted(elements)
        self.e0 = dict(e0) if e0 is not None else None
        self.gpu = gpu
        self.max_iterations = int(max_iterations or cfg.max_iterations)
        self.delta_max_iterations = int(delta_max_iterations or cfg.delta_max_iterations or self.max_iterations)
        self.threads = threads
        self.core_repulsion = core_repulsion
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        self.seed = seed

    # --------------------------------------------------------------------------------
    @property
    def functions_per_element(self) -> int:
        preset = auto_ace_preset(self.elements) if self.cfg.preset == "auto" else self.cfg.preset
        return int(self.cfg.number_of_functions_per_element or PRESET_FUNCTIONS[preset])

    def resolve_e0(self, train: LabelledSet, initial: TrainedModel | None = None) -> dict[str, float]:
        if self.e0 is not None:
            e0 = dict(self.e0)
        elif initial is not None and model_e0(initial):
            e0 = model_e0(initial)
        elif self.cfg.reference_energy == "zero":
            e0 = {}
        else:
            e0 = reference_energies(train, self.elements)
        return {el: float(e0.get(el, 0.0)) for el in self.elements}

    def input_dict(self, e0: Mapping[str, float], max_iterations: int, *,
                   test_file: str | None = None) -> dict[str, Any]:
        """The input.yaml content (``cfg.extra_input`` merged on top)."""
        fit: dict[str, Any] = {
            "loss": {"kappa": float(self.cfg.kappa), "L1_coeffs": 1e-8, "L2_coeffs": 1e-8},
            "optimizer": "BFGS",
            "maxiter": int(max_iterations),
        }
        if self.core_repulsion:
            fit["repulsion"] = "auto"
        data: dict[str, Any] = {"filename": "train.pckl.gzip",
                                "reference_energy": {el: float(v) for el, v in e0.items()}}
        if test_file:
            data["test_filename"] = test_file
        inp = {
            "seed": int(self.seed),
            "metadata": {"origin": "pyacemaker-hpc"},
            "potential": {
                "deltaSplineBins": 0.001,
                "elements": list(self.elements),
                "embeddings": {"ALL": {"npot": "FinnisSinclairShiftedScaled",
                                       "fs_parameters": [1, 1, 1, 0.5], "ndensity": 2}},
                "bonds": {"ALL": {"radbase": "SBessel", "radparameters": [5.25],
                                  "rcut": float(self.cfg.cutoff), "dcut": 0.01,
                                  "NameOfCutoffFunction": "cos"}},
                "functions": {"number_of_functions_per_element": self.functions_per_element,
                              **FUNCTIONS_SHAPE},
            },
            "data": data,
            "fit": fit,
            "backend": {"evaluator": self.cfg.evaluator, "batch_size": int(self.batch_size),
                        "display_step": 50},
        }
        return _deep_merge(inp, self.cfg.extra_input or {})

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if not self.gpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        if self.threads:
            for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
                env[k] = str(self.threads)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.setdefault("MPLBACKEND", "Agg")
        # a pacemaker started from an MPI rank must not think it is an MPI program itself
        for k in list(env):
            if k.startswith(("PMI_", "PMIX_", "OMPI_")):
                env.pop(k)
        return env

    # --------------------------------------------------------------------------------
    def fit(self, train: LabelledSet, workdir: str, *, initial: TrainedModel | None = None,
            name: str = "ace", weights: np.ndarray | None = None,
            force_weights: np.ndarray | None = None,
            test: LabelledSet | None = None, max_iterations: int | None = None) -> TrainedModel:
        """Fit (or, with ``initial``, continue fitting with ``-p``) an ACE potential.

        ``weights``: one per structure of ``train`` (before ``usable()`` filtering); a
        structure with weight w counts as w copies of itself in the loss.
        ``force_weights``: the same for the force term only (default: ``weights``).
        """
        t0 = time.time()
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
        for f in _PACEMAKER_OUTPUTS:
            (wd / f).unlink(missing_ok=True)
        for f in wd.glob("interim_potential*.yaml"):
            f.unlink()

        keep = [i for i, lab in enumerate(train.labels) if lab.ok]
        weights, force_weights = (None if w is None else _check_weights(w, len(train), what)[keep]
                                  for w, what in ((weights, "weights"), (force_weights, "force_weights")))
        good = train.usable()
        if len(good) == 0:
            raise PacemakerError(f"no usable training structures for {name!r} "
                                 f"({len(train)} given, none with a finite DONE label)")
        if initial is not None and (initial.kind != "ace" or ".yaml" not in initial.files):
            raise ValueError("initial must be an ACE TrainedModel with a .yaml file")

        e0 = self.resolve_e0(good, initial)
        _write_df(to_dataframe(good, e0, weights, force_weights), wd / "train.pckl.gzip")
        test_file = None
        if test is not None and len(test.usable()):
            tgood = test.usable()
            # pacemaker joins train+test before weighting: the test set needs weights too
            tw = np.ones(len(tgood)) if weights is not None else None
            _write_df(to_dataframe(tgood, e0, tw), wd / "test.pckl.gzip")
            test_file = "test.pckl.gzip"
        maxiter = int(max_iterations or self.max_iterations)
        inp = self.input_dict(e0, maxiter, test_file=test_file)
        (wd / "input.yaml").write_text(yaml.safe_dump(inp, sort_keys=False))

        # --no-predict: pacemaker's prediction pass re-initialises its backend and plots;
        # the metrics below come from the exported potential instead
        cmd = [_tool("pacemaker"), "input.yaml", "--no-predict"]
        if initial is not None:
            (wd / "initial.yaml").write_bytes(initial.files[".yaml"])
            cmd += ["-p", "initial.yaml"]
        env = self.env()
        t_pm = time.time()
        text = _run(cmd, wd, env, "pacemaker.out", self.timeout_s,
                    progress=(f"pacemaker fit {name}", maxiter))
        pm_seconds = time.time() - t_pm
        pot = wd / "output_potential.yaml"
        if not pot.is_file():
            raise PacemakerError(f"pacemaker finished without {pot}: " + _tail_message(text))

        _run([_tool("pace_yaml2yace"), pot.name, "-o", "output_potential.yace"], wd, env,
             "pace_yaml2yace.out", self.timeout_s)
        set_yace_e0(wd / "output_potential.yace", e0)
        files = {".yaml": pot.read_bytes(), ".yace": (wd / "output_potential.yace").read_bytes()}
        asi = build_active_set(pot, wd / "fitting_data_info.pckl.gzip", env, self.timeout_s)
        if asi is not None:
            files[".asi"] = asi

        model = TrainedModel(name=name, kind="ace", files=files)
        # figures of the exported .yace itself (ZBL core and E0 included), on the labels
        metrics: dict[str, float] = {}
        for k, v in rmse(predict(model, good.structures, str(wd / "eval")), good).items():
            metrics[f"train_{k}"] = v
        if test_file:
            for k, v in rmse(predict(model, tgood.structures, str(wd / "eval")), tgood).items():
                metrics[f"test_{k}"] = v
        # pacemaker's own figures at its last iteration (metrics.txt, eV units)
        row = _last_metrics_row(wd / "metrics.txt") if (wd / "metrics.txt").is_file() else {}
        for src, dst, scale in (("rmse_epa", "pacemaker_rmse_e_meV_atom", 1e3),
                                ("rmse_f_comp", "pacemaker_rmse_f_meV_A", 1e3),
                                ("loss", "loss", 1.0), ("iter_num", "iterations", 1.0),
                                ("nfuncs", "n_functions", 1.0), ("ncoefs", "n_coefficients", 1.0)):
            if src in row:
                metrics[dst] = scale * row[src]
        metrics.update({f"e0_{el}": v for el, v in e0.items()})
        metrics["n_train"] = float(len(good))
        metrics["weighted"] = float(weights is not None)
        metrics["continued"] = float(initial is not None)
        metrics["has_active_set"] = float(asi is not None)
        metrics["pacemaker_seconds"] = pm_seconds
        metrics["seconds"] = time.time() - t0
        model.metrics = metrics
        return model


def build_active_set(potential_yaml: Path, dataset: Path, env: dict,
                     timeout: float | None = None) -> bytes | None:
    """``pace_activeset -d DATASET POT.yaml`` -> the .asi bytes, or None (with a warning)
    when no active set can be built (e.g. fewer atoms than basis functions)."""
    pot = Path(potential_yaml)
    asi = pot.with_suffix(".asi")
    asi.unlink(missing_ok=True)
    cmd = [_tool("pace_activeset"), "-d", Path(dataset).name, pot.name]
    try:
        _run(cmd, pot.parent, env, "pace_activeset.out", timeout)
    except PacemakerError as err:
        # the default drops atoms with large force errors, which pace_activeset cannot do
        # in its batched (large data) mode; -a (all atoms) works in both modes
        log.info("pace_activeset failed (%s); retrying with --all-atoms", str(err).splitlines()[0])
        try:
            _run(cmd + ["-a"], pot.parent, env, "pace_activeset.out", timeout)
        except PacemakerError as err2:
            log.warning("no active set for %s: %s", pot, str(err2).splitlines()[0])
            return None
    return asi.read_bytes() if asi.is_file() else None


# ----------------------------------------------------------------------------------------
# using a fitted model
def _shifted_calculator_class():
    from pyace import PyACECalculator

    class E0ShiftedPyACECalculator(PyACECalculator):
        """PyACECalculator on a B-basis .yaml that adds per-element E0 to the energies
        (the .yaml stores energies relative to E0; the .yace carries E0 itself)."""

        def __init__(self, basis_set, e0: Mapping[str, float] | None = None, **kwargs):
            self._e0 = dict(e0 or {})
            super().__init__(basis_set, **kwargs)

        def calculate(self, atoms=None, properties=("energy", "forces", "stress", "energies"),
                      system_changes=None):
            from ase.calculators.calculator import all_changes

            super().calculate(atoms, properties, system_changes or all_changes)
            shift = np.array([self._e0.get(s, 0.0) for s in self.atoms.get_chemical_symbols()])
            self.energies = self.results["energies"] + shift
            self.energy = float(self.results["energy"] + shift.sum())
            self.results["energies"] = self.energies
            self.results["energy"] = self.energy
            self.results["free_energy"] = self.energy

    return E0ShiftedPyACECalculator


def ace_calculator(model: TrainedModel, workdir: str, with_active_set: bool = False):
    """An ASE calculator (pyace ``PyACECalculator``) for a fitted ACE model.

    Without active set: the .yace (total energies, E0 included).  With active set: the
    B-basis .yaml plus the .asi (``calc.results['gamma']`` per atom after a calculation),
    energies shifted by the same E0 so both give identical numbers.  A residual-delta model
    shipped as a pair (``metrics['single_file'] == 0``, not the usual case) gives an ASE
    ``SumCalculator`` of base and correction; with the active set, the base part alone.
    """
    from pyace import PyACECalculator

    if model.kind != "ace":
        raise ValueError(f"{model.name}: not an ACE model (kind={model.kind!r})")
    paths = model.write(workdir)
    pair = model.metrics.get("single_file", 1.0) == 0.0 and ".correction.yace" in paths
    if not with_active_set:
        if pair:  # residual delta shipped as two potentials (see trainer.delta)
            from ase.calculators.mixing import SumCalculator

            return SumCalculator([PyACECalculator(paths[".yace"]),
                                  PyACECalculator(paths[".correction.yace"])])
        return PyACECalculator(paths[".yace"])
    if ".asi" not in paths:
        raise ValueError(f"{model.name}: the model has no active set (.asi)")
    calc = _shifted_calculator_class()(paths[".yaml"], e0=model_e0(model))
    calc.set_active_set(paths[".asi"])
    return calc


def predict(model: TrainedModel, structures: Sequence[Atoms], workdir: str) -> list[Label]:
    """Energies (total, eV), forces and stress (eV/A^3, Voigt; None without a 3D cell)."""
    calc = ace_calculator(model, workdir)
    out = []
    for at in structures:
        a = at.copy()
        a.calc = calc
        t = time.time()
        e = float(a.get_potential_energy())
        f = a.get_forces().copy()
        s = a.get_stress(voigt=True).copy() if a.cell.rank == 3 and a.pbc.all() else None
        out.append(Label(energy=e, forces=f, stress=s, seconds=time.time() - t))
    return out


def rmse(pred: Sequence[Label], ref: Sequence[Label] | LabelledSet,
         structures: Sequence[Atoms] | None = None) -> dict[str, float]:
    """Energy (meV/atom) and force-component (meV/A) RMSE of predictions against labels."""
    if isinstance(ref, LabelledSet):
        structures, ref = ref.structures, ref.labels
    nat = np.array([len(a) for a in structures], dtype=float)
    de = (np.array([p.energy for p in pred]) - np.array([r.energy for r in ref])) / nat
    df = np.concatenate([(np.asarray(p.forces) - np.asarray(r.forces)).reshape(-1)
                         for p, r in zip(pred, ref)])
    return {"rmse_e_meV_atom": float(1e3 * np.sqrt(np.mean(de ** 2))),
            "rmse_f_meV_A": float(1e3 * np.sqrt(np.mean(df ** 2)))}
