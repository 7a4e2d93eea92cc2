"""MACE as a surrogate oracle: batched labels, committee uncertainty, MD sampling.

Three things the distillation steps need from MACE, behind the ``SurrogateOracle``
contract of ``core/interfaces.py``:

* **labels** (step 5) for thousands of small cells. ``MaceCommittee.label_batch`` builds
  mace's own graphs (``AtomicData.from_config``), collates them once (mace's ``Batch``,
  shared by committee members with the same elements/cutoff) and runs the model on
  batches of at most ``batch_size`` structures and, on CPU, ``max_batch_atoms`` (128)
  atoms, instead of one ASE calculator call per structure. The numbers are identical to
  ``MACECalculator``'s (the tests check 1e-6 eV and eV/A).
* **uncertainty** (step 2): the spread of a committee of MACE models (ensembles are the
  most reliable uncertainty in published comparisons). Per structure: the std of the
  energy per atom, and the max over atoms of sqrt(sum over x,y,z of the force variance),
  the quantity of DP-GEN's trust levels and of ``mace_active_learning_md``. One member
  gives zeros: no committee, no information (the caller decides what that means).
* **MD** (step 4): ``run_md_replica`` runs Langevin MD with the first model and returns
  frames that pass physical filters (no overlapping atoms, no absurd forces, optionally a
  committee-spread cut), with counts of what was discarded and why.

Models are named by a MACE-MP foundation name (resolved by mace's own loader, which uses
its cache ``$XDG_CACHE_HOME/mace`` or ``~/.cache/mace`` and downloads otherwise) or by the
path of a ``.model`` file. ``"MACE-MP-0"`` means mace's ``"medium"`` (the original MACE-MP-0
checkpoint); mace's own default ``mace_mp(model=None)`` is *medium-mpa-0*, a different
model, which is why we never rely on that default.

torch's global default dtype: mace sets it when it loads or trains models, which silently
changes every later ``torch.tensor`` in the process. Every public entry point here sets
it to the requested dtype for its own duration and restores the caller's value on exit.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from ase import Atoms

from ..core.models import FAILED, Label, Uncertainty

log = logging.getLogger(__name__)

#: user-facing alias -> mace's foundation name. Everything in mace's own table
#: (``mace.calculators.foundations_models.mace_mp_urls``) is accepted as well.
FOUNDATION_ALIASES = {"MACE-MP-0": "medium", "mace-mp-0": "medium"}


class ModelLoadError(RuntimeError):
    """A MACE model could not be found, downloaded or loaded (one clear message)."""


# ----------------------------------------------------------------------------------------
# model resolution and device
def _mace_names() -> set[str]:
    try:
        from mace.calculators.foundations_models import mace_mp_urls
    except Exception:  # noqa: BLE001 - mace missing or broken: only paths work
        return set()
    return set(mace_mp_urls)


def is_mace_foundation_name(name: str) -> bool:
    """True for a name mace's MACE-MP loader knows (or one of our aliases)."""
    return name in FOUNDATION_ALIASES or name in _mace_names()


def resolve_model(name_or_path: str) -> str:
    """Local path of a MACE model given a MACE-MP foundation name or a file path.

    A foundation name goes through mace's own loader
    (``mace.calculators.foundations_models.download_mace_mp_checkpoint``): bundled file,
    then the cache (``$XDG_CACHE_HOME/mace`` or ``~/.cache/mace``), then a download.
    ``"MACE-MP-0"`` maps to ``"medium"``. A path must be an existing file. Anything that
    fails raises ``ModelLoadError`` saying what to do.
    """
    name = str(name_or_path)
    if is_mace_foundation_name(name):
        key = FOUNDATION_ALIASES.get(name, name)
        from mace.calculators.foundations_models import download_mace_mp_checkpoint
        from mace.tools.utils import get_cache_dir

        try:
            path = download_mace_mp_checkpoint(key)
        except Exception as err:  # noqa: BLE001 - URLError, timeout, HTTP, disk...
            raise ModelLoadError(
                f"cannot load MACE foundation model {name!r} (mace name {key!r}): it is not in "
                f"mace's cache ({get_cache_dir()}) and the download failed "
                f"({type(err).__name__}: {err}). Without internet, either set base_model to a "
                f"local .model file, or pre-fill the cache on a machine with internet "
                f"(python -c \"from mace.calculators import mace_mp; mace_mp(model='{key}')\") "
                f"and copy {get_cache_dir()} to the same place ($XDG_CACHE_HOME/mace or "
                f"~/.cache/mace) here.") from None
        if not Path(path).is_file():
            raise ModelLoadError(f"mace's loader returned {path} for {name!r}, which is not a file")
        return str(path)
    p = Path(name).expanduser()
    if p.is_file():
        return str(p.resolve())
    raise ModelLoadError(
        f"MACE model not found: {name!r} is neither an existing file nor a MACE-MP foundation "
        f"name ({', '.join(sorted(set(FOUNDATION_ALIASES) | _mace_names()))})")


def pick_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cpu'/'cuda' pass through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested but torch sees no GPU (use 'auto' or 'cpu')")
    return device


@contextlib.contextmanager
def torch_dtype(dtype: str):
    """Set torch's default dtype for the block, restore the caller's afterwards."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == "float64" else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def load_mace_model(path: str, device: str, default_dtype: str):
    """torch.load a MACE ``.model`` (a pickled module) on ``device`` in ``default_dtype``."""
    import torch

    try:
        model = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot load MACE model {path}: {type(err).__name__}: {err}") from None
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "r_max"):
        raise ModelLoadError(f"{path} is not a MACE model file (torch.load gave {type(model).__name__})")
    model = model.double() if default_dtype == "float64" else model.float()
    # map_location moves the stored tensors, not the constants e3nn's compiled submodules
    # keep (the w3j tensors): without .to() a CPU-saved model fails on CUDA ("mat2 is on cpu")
    model = model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _pick_head(model, head: str | None) -> tuple[list[str], str]:
    heads = list(getattr(model, "heads", None) or ["Default"])
    if head is not None:
        if head not in heads:
            raise ModelLoadError(f"head {head!r} not in the model's heads {heads}")
        return heads, head
    if len(heads) == 1:
        return heads, heads[0]
    # a multihead fine-tuned model: the user's head, never the replay (pt_head) one
    for h in heads:
        if h.lower() == "default":
            return heads, h
    return heads, [h for h in heads if h != "pt_head"][-1]


# ----------------------------------------------------------------------------------------
class MaceCommittee:
    """One or more MACE models evaluated together (a ``SurrogateOracle``).

    The first model is *the* surrogate: ``label_batch`` and ``calculator`` use it. All
    members enter ``predict_all`` and ``uncertainty``. Members may differ in size or
    elements; graphs are built and collated once per distinct (elements, cutoff, heads).

    Batches: consecutive structures, at most ``batch_size`` of them and at most
    ``max_batch_atoms`` atoms together (a single larger structure is a batch of its own;
    0 = no atom cap). ``None`` means 128 on CPU, where larger batches are slower per
    structure (cache), and no cap on a GPU.
    """

    name = "mace"

    #: CPU default of ``max_batch_atoms``: above ~128-256 atoms per model call the batched
    #: tensors leave the CPU caches and the time per structure *grows* (measured with the
    #: demo foundation, benchmarks/uncertainty.py: 32-atom cells at 32 per batch ran at 0.8x
    #: the speed of one calculator call per structure, at 4 per batch at 1.6x)
    CPU_MAX_BATCH_ATOMS = 128

    def __init__(self, models: list[str], device: str = "cpu", default_dtype: str = "float64",
                 batch_size: int = 32, head: str | None = None, max_batch_atoms: int | None = None):
        if isinstance(models, (str, os.PathLike)):
            models = [models]
        if not models:
            raise ValueError("MaceCommittee needs at least one model")
        if default_dtype not in ("float32", "float64"):
            raise ValueError(f"default_dtype must be float32 or float64 (got {default_dtype!r})")
        self.paths = [resolve_model(str(m)) for m in models]
        self.device = pick_device(device)
        self.default_dtype = default_dtype
        self.batch_size = int(batch_size)
        if max_batch_atoms is None:  # auto: a cap on CPU, none on a GPU (bigger is better there)
            max_batch_atoms = self.CPU_MAX_BATCH_ATOMS if self.device == "cpu" else 0
        self.max_batch_atoms = int(max_batch_atoms)
        self.head = head
        with torch_dtype(default_dtype):
            self.models = [load_mace_model(p, self.device, default_dtype) for p in self.paths]
        self._meta = []
        for m in self.models:
            heads, h = _pick_head(m, head)
            zs = tuple(int(z) for z in m.atomic_numbers)
            self._meta.append({"zs": zs, "r_max": float(m.r_max), "heads": heads, "head": h})

    def __len__(self) -> int:
        return len(self.models)

    # -- graphs ------------------------------------------------------------------------
    def _graph_key(self, k: int):
        m = self._meta[k]
        return (m["zs"], m["r_max"], tuple(m["heads"]), m["head"])

    def _graphs(self, structures: Sequence[Atoms], k: int) -> list:
        from mace import data as mace_data
        from mace.tools.utils import AtomicNumberTable

        m = self._meta[k]
        z_table = AtomicNumberTable(list(m["zs"]))
        known = set(m["zs"])
        keyspec = mace_data.KeySpecification(info_keys={}, arrays_keys={})
        out = []
        for i, at in enumerate(structures):
            extra = set(int(z) for z in at.numbers) - known
            if extra:
                raise ValueError(f"structure {i}: elements {sorted(extra)} unknown to MACE model "
                                 f"{self.paths[k]} (it knows {sorted(known)})")
            cfg = mace_data.config_from_atoms(at, key_specification=keyspec, head_name=m["head"])
            out.append(mace_data.AtomicData.from_config(cfg, z_table=z_table, cutoff=m["r_max"],
                                                        heads=m["heads"]))
        return out

    def _batches(self, graphs: list) -> list:
        """Collated batches of ``graphs`` (see the class docstring for their size)."""
        from mace.tools.torch_geometric.batch import Batch

        out, i, n = [], 0, len(graphs)
        while i < n:
            j, atoms = i, 0
            while j < n and j - i < self.batch_size:
                na = int(graphs[j].num_nodes)
                if j > i and self.max_batch_atoms and atoms + na > self.max_batch_atoms:
                    break
                atoms += na
                j += 1
            out.append(Batch.from_data_list(graphs[i:j]).to(self.device))
            i = j
        return out

    def _run(self, k: int, batches: list, pbc: Sequence[bool]):
        """Energies (n,), forces list of (n_at,3), stress (n,6) (nan for non-periodic)."""
        from ase.stress import full_3x3_to_voigt_6_stress

        model = self.models[k]
        energies, forces, stress = [], [], []
        for batch in batches:
            out = model(batch.to_dict(), compute_force=True, compute_stress=True, training=False)
            e = out["energy"].detach().cpu().numpy()
            f = out["forces"].detach().cpu().numpy()
            s = out["stress"].detach().cpu().numpy() if out.get("stress") is not None else None
            ptr = batch.ptr.cpu().numpy()
            for g in range(len(e)):
                energies.append(float(e[g]))
                forces.append(f[ptr[g]:ptr[g + 1]].copy())
                stress.append(full_3x3_to_voigt_6_stress(s[g]) if s is not None else np.full(6, np.nan))
        stress = np.array(stress, dtype=float).reshape(-1, 6)
        for i, p in enumerate(pbc):
            if not p:
                stress[i] = np.nan
        return np.array(energies), forces, stress

    #: structures whose graphs are held in memory at once (graphs are built once per
    #: chunk and shared by all members with the same elements/cutoff/heads)
    chunk_size = 2048

    def _predict(self, structures: Sequence[Atoms], members: Iterable[int]):
        structures = list(structures)
        members = list(members)
        res: dict = {k: ([], [], []) for k in members}
        with torch_dtype(self.default_dtype):
            for c0 in range(0, len(structures), self.chunk_size):
                chunk = structures[c0:c0 + self.chunk_size]
                pbc = [bool(np.all(a.pbc)) for a in chunk]
                cache: dict = {}
                for k in members:
                    key = self._graph_key(k)
                    if key not in cache:
                        cache[key] = self._batches(self._graphs(chunk, k))
                    e, f, s = self._run(k, cache[key], pbc)
                    res[k][0].append(e)
                    res[k][1].extend(f)
                    res[k][2].append(s)
        return {k: (np.concatenate(e) if e else np.zeros(0), f,
                    np.concatenate(s) if s else np.zeros((0, 6))) for k, (e, f, s) in res.items()}

    # -- public API ----------------------------------------------------------------------
    def label_batch(self, structures: Sequence[Atoms], mean: bool = False) -> list[Label]:
        """Energy, forces, stress of every structure from the first model (``mean``: the
        members' mean), batched."""
        structures = list(structures)
        if not structures:
            return []
        t = time.perf_counter()
        if mean and len(self.models) > 1:
            res = self._predict(structures, range(len(self.models)))
            e = np.mean([r[0] for r in res.values()], axis=0)
            f = [np.mean([r[1][i] for r in res.values()], axis=0) for i in range(len(structures))]
            s = np.mean([r[2] for r in res.values()], axis=0)
        else:
            e, f, s = self._predict(structures, [0])[0]
        dt = (time.perf_counter() - t) / len(structures)
        labels = []
        for i in range(len(structures)):
            st = None if np.isnan(s[i]).all() else s[i].copy()
            lab = Label(energy=float(e[i]), forces=f[i], stress=st, seconds=dt)
            if not lab.ok:  # a model blow-up must never reach training data
                lab = Label(energy=float(e[i]), forces=f[i], stress=st, seconds=dt, status=FAILED,
                            error="MACE returned non-finite energy/forces/stress")
            labels.append(lab)
        return labels

    def predict_all(self, structures: Sequence[Atoms]):
        """Every member's predictions: energies (K, n), forces list (K) of lists (n) of
        (n_at, 3) arrays, stress (K, n, 6) in eV/A^3 (nan for non-periodic cells)."""
        structures = list(structures)
        res = self._predict(structures, range(len(self.models)))
        K = len(self.models)
        energies = np.array([res[k][0] for k in range(K)]).reshape(K, len(structures))
        forces = [res[k][1] for k in range(K)]
        stress = np.array([res[k][2] for k in range(K)]).reshape(K, len(structures), 6)
        return energies, forces, stress

    def uncertainty(self, structures: Sequence[Atoms]) -> Uncertainty:
        """Committee spread per structure (see ``core.models.Uncertainty``); zeros for one
        member. Population std (ddof=0), as mace's committee calculator uses."""
        structures = list(structures)
        n = len(structures)
        if len(self.models) < 2 or n == 0:
            return Uncertainty(energy_std=np.zeros(n), force_std=np.zeros(n))
        energies, forces, _ = self.predict_all(structures)
        nat = np.array([len(a) for a in structures], dtype=float)
        e_std = np.std(energies / nat[None, :], axis=0)
        f_std = np.zeros(n)
        for i in range(n):
            fi = np.stack([forces[k][i] for k in range(len(self.models))])  # (K, n_at, 3)
            per_atom = np.sqrt(np.var(fi, axis=0).sum(axis=1))
            f_std[i] = float(per_atom.max()) if per_atom.size else 0.0
        return Uncertainty(energy_std=e_std, force_std=f_std)

    def calculator(self):
        """A mace ``MACECalculator`` of the first model (for MD and ASE tools)."""
        from mace.calculators import MACECalculator

        with torch_dtype(self.default_dtype):
            return MACECalculator(model_paths=self.paths[0], device=self.device,
                                  default_dtype=self.default_dtype, head=self._meta[0]["head"])


# ----------------------------------------------------------------------------------------
# MD sampling (step 4)
def _min_distance_violation(atoms: Atoms, factor: float) -> bool:
    """True when two atoms are closer than ``factor`` x the sum of their covalent radii."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    if len(atoms) < 2 and not atoms.pbc.any():
        return False
    rc = covalent_radii[atoms.numbers] * factor
    i, j, d = neighbor_list("ijd", atoms, float(2 * rc.max()))
    return bool(np.any(d < rc[i] + rc[j]))


def strained(atoms: Atoms, strain: float) -> Atoms:
    """A copy with the cell scaled isotropically by (1 + strain), atoms following."""
    at = atoms.copy()
    at.calc = None
    if strain:
        at.set_cell(np.asarray(at.cell) * (1.0 + strain), scale_atoms=True)
    return at


def run_md_replica(model: str, atoms: Atoms, *, temperature: float, strain: float, md, seed: int,
                   device: str = "cpu", default_dtype: str = "float64",
                   committee: list[str] | None = None,
                   friction_per_fs: float = 0.02) -> tuple[list[Atoms], dict[str, int]]:
    """One Langevin MD replica with a MACE model; returns (kept frames, counts).

    Starts from ``atoms`` with its cell scaled by (1 + ``strain``), Maxwell-Boltzmann
    velocities at ``temperature`` (K) and the Langevin thermostat (``friction_per_fs``,
    1/fs) seeded by ``seed``; runs ``md.steps`` steps of ``md.timestep_fs`` and looks at a
    frame every ``md.sample_interval`` steps. A frame is discarded when

    * ``non_finite``: positions or forces are not finite;
    * ``min_distance``: two atoms are closer than ``md.min_distance_factor`` x the sum of
      their covalent radii;
    * ``max_force``: an atom's |F| exceeds ``md.max_force`` (eV/A);
    * ``force_std``: (only with ``committee`` and ``md.max_force_std``) the committee's
      force spread (``Uncertainty.force_std``) exceeds ``md.max_force_std``.

    The first three mean the trajectory has left physical ground: the replica stops there
    (``stopped_early`` = 1) rather than sample a runaway. A ``force_std`` discard does not
    stop it. ``committee``: the members whose spread is measured; with one entry it is
    compared with ``model`` itself. Counts also hold ``sampled`` and ``kept``. Kept frames
    carry ``info['provenance'] = 'md:T{T}:eps{strain}:seed{seed}:step{k}'`` and no
    calculator (step 5 labels them in batches).
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    interval = int(md.sample_interval)
    counts = {"sampled": 0, "kept": 0, "non_finite": 0, "min_distance": 0, "max_force": 0,
              "force_std": 0, "stopped_early": 0}
    judge = None
    if committee and getattr(md, "max_force_std", None):
        members = list(committee) if len(committee) >= 2 else [model, *committee]
        judge = MaceCommittee(members, device=device, default_dtype=default_dtype)

    at = strained(atoms, strain)
    at.calc = MaceCommittee([model], device=device, default_dtype=default_dtype).calculator()
    rng = np.random.default_rng(seed)
    kept: list[Atoms] = []
    with torch_dtype(default_dtype):
        MaxwellBoltzmannDistribution(at, temperature_K=temperature, rng=rng)
        Stationary(at)
        at.set_constraint(FixCom())  # ASE's recommended replacement of Langevin(fixcm=True)
        dyn = Langevin(at, timestep=md.timestep_fs * units.fs, temperature_K=temperature,
                       friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
        step = 0
        while step + interval <= md.steps:
            try:
                dyn.run(interval)
            except Exception as err:  # noqa: BLE001 - e.g. neighbour list blow-up
                log.warning("MD replica T=%s eps=%s seed=%s stopped at step %d: %s",
                            temperature, strain, seed, step, err)
                counts["non_finite"] += 1
                counts["stopped_early"] = 1
                break
            step += interval
            counts["sampled"] += 1
            frame = at.copy()
            frame.calc = None
            frame.set_constraint()
            forces = at.get_forces()
            if not (np.all(np.isfinite(frame.positions)) and np.all(np.isfinite(forces))):
                counts["non_finite"] += 1
                counts["stopped_early"] = 1
                break
            if _min_distance_violation(frame, md.min_distance_factor):
                counts["min_distance"] += 1
                counts["stopped_early"] = 1
                break
            if float(np.linalg.norm(forces, axis=1).max()) > md.max_force:
                counts["max_force"] += 1
                counts["stopped_early"] = 1
                break
            if judge is not None:
                if float(judge.uncertainty([frame]).force_std[0]) > md.max_force_std:
                    counts["force_std"] += 1
                    continue
            frame.info["provenance"] = f"md:T{temperature:g}:eps{strain:g}:seed{seed}:step{step}"
            kept.append(frame)
            counts["kept"] += 1
    return kept, counts
