"""Typed domain models passed between the seven steps.

Structures travel as ASE ``Atoms`` (the field's lingua franca); everything that is not a
structure is one of the small dataclasses below. They are plain data: no I/O, no MPI, so
a step can be tested on its own and the campaign file can store them one to one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

#: per-item label status values stored in the campaign
PENDING, DONE, FAILED = "pending", "done", "failed"


def structure_uid(atoms: Atoms) -> str:
    """Content hash of a structure (numbers, positions, cell, pbc) rounded to 1e-6.

    Identical geometries get identical uids, which is what lets a restart recognise a DFT
    job it has already paid for, whichever step asked for it.
    """
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.round(atoms.positions, 6).astype(np.float64).tobytes())
    h.update(np.round(np.asarray(atoms.cell), 6).astype(np.float64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    return h.hexdigest()[:20]


@dataclass
class Label:
    """One structure's reference data: energy (eV), forces (eV/A), stress (eV/A^3, Voigt).

    ``status`` is DONE or FAILED; a FAILED label keeps its ``error`` text and never reaches
    training data. ``stress`` may be None when the calculator does not provide it.
    """

    energy: float = float("nan")
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    status: str = DONE
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == DONE and is_finite_label(self)

    @classmethod
    def failed(cls, error: str, seconds: float = 0.0) -> "Label":
        return cls(status=FAILED, error=error, seconds=seconds)


def is_finite_label(label: Label) -> bool:
    """True when energy and forces exist and are finite (stress is optional)."""
    if label.forces is None or not np.isfinite(label.energy):
        return False
    if not np.all(np.isfinite(label.forces)):
        return False
    return label.stress is None or bool(np.all(np.isfinite(label.stress)))


@dataclass
class LabelledSet:
    """Structures with one label each, in the same order (a training or test set)."""

    structures: list[Atoms]
    labels: list[Label]

    def __post_init__(self):
        if len(self.structures) != len(self.labels):
            raise ValueError("structures and labels differ in length")

    def __len__(self) -> int:
        return len(self.structures)

    def usable(self) -> "LabelledSet":
        """Only the items whose label is DONE and finite: what training may see."""
        return self.subset([i for i, lab in enumerate(self.labels) if lab.ok])

    def subset(self, indices) -> "LabelledSet":
        return LabelledSet([self.structures[i] for i in indices], [self.labels[i] for i in indices])

    def __add__(self, other: "LabelledSet") -> "LabelledSet":
        return LabelledSet(self.structures + other.structures, self.labels + other.labels)

    def to_atoms(self) -> list[Atoms]:
        """Copies with the labels attached as a SinglePointCalculator (for extxyz/ASE)."""
        from ase.calculators.singlepoint import SinglePointCalculator

        out = []
        for at, lab in zip(self.structures, self.labels):
            a = at.copy()
            res = {"energy": lab.energy, "forces": lab.forces}
            if lab.stress is not None:
                res["stress"] = lab.stress
            a.calc = SinglePointCalculator(a, **res)
            out.append(a)
        return out


@dataclass
class Uncertainty:
    """Committee disagreement per structure.

    ``energy_std``: std of the committee's energy per atom (eV/atom).
    ``force_std``: max over atoms of the norm of the per-component force std (eV/A),
    the quantity DP-GEN's trust levels and mace's active-learning MD both use.
    """

    energy_std: np.ndarray
    force_std: np.ndarray


@dataclass
class TrainedModel:
    """A potential file produced by a trainer, kept as bytes so the campaign is
    self-contained. ``kind`` is 'mace' or 'ace'; ``files`` maps a suffix ('.model',
    '.yaml', '.yace', '.asi') to that file's bytes; ``metrics`` holds fit figures."""

    name: str
    kind: str
    files: dict[str, bytes]
    metrics: dict[str, float] = field(default_factory=dict)

    def sha256(self, suffix: str) -> str:
        return hashlib.sha256(self.files[suffix]).hexdigest()

    def write(self, directory, stem: str | None = None) -> dict[str, str]:
        """Write every file of the model into ``directory``; return suffix -> path."""
        from pathlib import Path

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = {}
        for suffix, data in self.files.items():
            p = d / f"{stem or self.name}{suffix}"
            p.write_bytes(data)
            paths[suffix] = str(p)
        return paths
