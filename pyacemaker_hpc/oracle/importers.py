"""DFT data a user already has, as a LabelledSet: extxyz, pacemaker DataFrame pickles,
vasprun.xml files and folders of VASP runs."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms

from ..core.models import Label, LabelledSet
from .vasp import parse_vasprun

_PICKLE = (".pckl", ".pkl", ".pickle")
_ARCHIVE_DIR = re.compile(r"^(attempt|previous)\d+$")  # the oracle's own failed-attempt folders


def _plain(at: Atoms, drop: tuple[str, ...] = ()) -> Atoms:
    a = Atoms(at.numbers, positions=at.positions, cell=at.cell, pbc=at.pbc)
    a.info.update({k: v for k, v in at.info.items() if k not in drop})
    return a


def _voigt(stress) -> np.ndarray | None:
    if stress is None:
        return None
    s = np.asarray(stress, dtype=float)
    if s.size == 9:
        m = s.reshape(3, 3)
        return np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])
    if s.size == 6:
        return s.reshape(6)
    raise ValueError(f"stress with {s.size} components")


def _from_frames(path: Path, frames: list[Atoms], energy_key: str, forces_key: str,
                 stress_key: str) -> LabelledSet:
    structures, labels = [], []
    for k, at in enumerate(frames):
        results = at.calc.results if at.calc is not None else {}
        energy = at.info.get(energy_key, results.get(energy_key))
        forces = at.arrays.get(forces_key, results.get(forces_key))
        stress = at.info.get(stress_key, results.get(stress_key))
        if energy is None or forces is None:
            have = sorted(set(at.info) | set(at.arrays) | set(results))
            missing = energy_key if energy is None else forces_key
            raise ValueError(f"{path}: frame {k} has no {missing!r} (keys there: {', '.join(have)})")
        structures.append(_plain(at, drop=(energy_key, stress_key)))
        labels.append(Label(energy=float(energy), forces=np.asarray(forces, dtype=float),
                            stress=_voigt(stress)))
    return LabelledSet(structures, labels)


def _from_pickle(path: Path, energy_key: str, forces_key: str, stress_key: str) -> LabelledSet:
    import pandas as pd

    gz = path.name.endswith((".gz", ".gzip"))
    try:
        df = pd.read_pickle(path, compression="gzip" if gz else "infer")
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable pandas pickle: {type(err).__name__}: {err}") from None
    if not isinstance(df, pd.DataFrame) or "ase_atoms" not in df.columns:
        raise ValueError(f"{path}: not a pacemaker DataFrame (needs an 'ase_atoms' column)")
    ecol = next((c for c in (energy_key, "energy", "energy_corrected") if c in df.columns), None)
    fcol = next((c for c in (forces_key, "forces") if c in df.columns), None)
    if ecol is None or fcol is None:
        raise ValueError(f"{path}: needs columns {energy_key!r} (or 'energy_corrected') and "
                         f"{forces_key!r}; has {', '.join(map(str, df.columns))}")
    scol = stress_key if stress_key in df.columns else None
    structures, labels = [], []
    for _, row in df.iterrows():
        structures.append(_plain(row["ase_atoms"]))
        stress = row[scol] if scol is not None else None
        labels.append(Label(energy=float(row[ecol]), forces=np.asarray(row[fcol], dtype=float),
                            stress=None if stress is None else _voigt(stress)))
    return LabelledSet(structures, labels)


def _vasp_runs(root: Path) -> list[Path]:
    runs = []
    for d, dirnames, files in os.walk(root):
        dirnames[:] = sorted(n for n in dirnames if not _ARCHIVE_DIR.match(n))
        if "vasprun.xml" in files or "OUTCAR" in files:
            runs.append(Path(d))
    return sorted(runs)


def _from_outcar(outcar: Path) -> tuple[Atoms | None, Label]:
    from ase.io import read

    try:
        at = read(str(outcar), format="vasp-out", index=-1)
        energy = at.get_potential_energy(force_consistent=True)
        stress = at.calc.results.get("stress")
        return _plain(at), Label(energy=float(energy), forces=np.array(at.get_forces()),
                                 stress=None if stress is None else np.asarray(stress, dtype=float))
    except Exception as err:  # noqa: BLE001
        return None, Label.failed(f"parse_error: {outcar}: {type(err).__name__}: {err}")


def _from_vasp_dir(root: Path) -> LabelledSet:
    structures, labels = [], []
    for run in _vasp_runs(root):
        if (run / "vasprun.xml").is_file():
            at, lab = parse_vasprun(run / "vasprun.xml")
        else:
            at, lab = _from_outcar(run / "OUTCAR")
        if at is None and (run / "POSCAR").is_file():
            from ase.io import read

            try:
                at = _plain(read(str(run / "POSCAR"), format="vasp"))
            except Exception:  # noqa: BLE001
                at = None
        if at is None:
            warnings.warn(f"skipped {run}: {lab.error or 'no structure'}", stacklevel=3)
            continue
        at.info["source"] = str(run)
        structures.append(at)
        labels.append(lab)
    if not structures:
        raise ValueError(f"{root}: no VASP run (vasprun.xml or OUTCAR) found")
    return LabelledSet(structures, labels)


def import_labelled(path: str | os.PathLike, *, energy_key: str = "energy", forces_key: str = "forces",
                    stress_key: str = "stress") -> LabelledSet:
    """Read existing DFT labels into a LabelledSet (structures without calculators).

    - extxyz (``.xyz``/``.extxyz``): ``energy_key`` from ``info``, ``forces_key`` from the
      per-atom arrays, ``stress_key`` (6 or 9 values) from ``info``; each falls back to a
      SinglePointCalculator's results. A frame without energy or forces is a ValueError.
    - a pacemaker DataFrame pickle (``.pckl``/``.pkl``/``.pickle``, optionally ``.gzip``/
      ``.gz``): columns ``ase_atoms``, ``energy_key`` (else ``energy``, else
      ``energy_corrected``), ``forces``, and ``stress_key`` when present.
    - a vasprun.xml file (``.xml``): its last ionic step, free energy (TOTEN).
    - a folder: every run folder below it with a vasprun.xml (else an OUTCAR), last ionic
      step each; failed runs come back as FAILED labels (``usable()`` drops them), runs
      without any structure are skipped with a warning; ``attemptN``/``previousN``
      folders (the oracle's archived attempts) are not read.
    - anything else ASE can read with energies attached (``.traj``, ``.db``, ...).

    Unknown or unreadable formats raise ValueError naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    if p.is_dir():
        return _from_vasp_dir(p)
    name = p.name.lower()
    stem = re.sub(r"\.(gz|gzip)$", "", name)
    if stem.endswith(_PICKLE):
        return _from_pickle(p, energy_key, forces_key, stress_key)
    if name.endswith(".xml"):
        at, lab = parse_vasprun(p)
        if at is None:
            raise ValueError(f"{p}: no usable VASP result: {lab.error}")
        return LabelledSet([at], [lab])
    if name.startswith("outcar"):
        at, lab = _from_outcar(p)
        if at is None:
            raise ValueError(f"{p}: no usable VASP result: {lab.error}")
        return LabelledSet([at], [lab])
    from ase.io import read

    fmt = "extxyz" if name.endswith((".xyz", ".extxyz")) else None
    try:
        frames = read(str(p), index=":", format=fmt)
    except Exception as err:  # noqa: BLE001 - ASE's many reader errors
        raise ValueError(f"{p}: unknown or unreadable format ({type(err).__name__}: {err})") from None
    if not isinstance(frames, list):
        frames = [frames]
    return _from_frames(p, frames, energy_key, forces_key, stress_key)
