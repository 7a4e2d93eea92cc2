"""Small labelled data sets made on the spot with ASE calculators (EMT by default).

Used by the tests, the benchmarks and the demo-foundation build script: real structures
labelled by a real (if crude) calculator, so nothing is downloaded and nothing is faked.
"""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from ..core.models import Label, LabelledSet


def perturbed_bulk(symbol: str = "Cu", n: int = 20, seed: int = 0, a: float | None = None,
                   strain: float = 0.05, rattle: tuple[float, float] = (0.03, 0.2),
                   cubic: bool = True, repeat=(1, 1, 1)) -> list[Atoms]:
    """``n`` strained and rattled copies of a bulk cell (4 atoms for cubic fcc)."""
    rng = np.random.default_rng(seed)
    base = bulk(symbol, cubic=cubic, a=a).repeat(repeat)
    out = []
    for k in range(n):
        at = base.copy()
        eps = rng.uniform(-strain, strain, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        at.set_cell(at.cell @ (np.eye(3) + eps), scale_atoms=True)
        amp = rng.uniform(*rattle)
        at.positions += rng.normal(0.0, amp, size=at.positions.shape)
        at.info["provenance"] = f"toy:strain{strain}:rattle{amp:.3f}:{k}"
        out.append(at)
    return out


def label_with(structures: list[Atoms], calc_factory=EMT) -> LabelledSet:
    """Label structures with an ASE calculator (energy, forces, stress)."""
    labels = []
    for at in structures:
        a = at.copy()
        a.calc = calc_factory()
        labels.append(Label(energy=float(a.get_potential_energy()), forces=a.get_forces().copy(),
                            stress=a.get_stress(voigt=True).copy()))
    return LabelledSet([s.copy() for s in structures], labels)


def write_mace_extxyz(ls: LabelledSet, path: str, prefix: str = "REF_") -> None:
    """extxyz with ``{prefix}energy``, ``{prefix}forces``, ``{prefix}stress`` (mace's keys)."""
    from ase.io import write

    frames = []
    for at, lab in zip(ls.structures, ls.labels):
        a = at.copy()
        a.calc = None
        a.info[f"{prefix}energy"] = float(lab.energy)
        a.arrays[f"{prefix}forces"] = np.asarray(lab.forces, dtype=float)
        if lab.stress is not None:
            a.info[f"{prefix}stress"] = np.asarray(lab.stress, dtype=float)
        frames.append(a)
    write(path, frames, format="extxyz")
