"""The three module families behind small contracts (Protocols), in the spirit of
ASE's Calculator: one contract, many backends.

Data flows one way: a StructureGenerator makes structures, a DescriptorCalculator and a
Selector pick among them, an Oracle (DFT) or SurrogateOracle (MACE) labels them, a Trainer
turns labelled sets into a TrainedModel. The orchestrator only talks to these contracts.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from ase import Atoms

from .models import Label, LabelledSet, TrainedModel, Uncertainty


@runtime_checkable
class StructureGenerator(Protocol):
    """Makes candidate structures from seeds (mutations, prototypes, MD)."""

    def generate(self, seeds: Sequence[Atoms], rng: np.random.Generator) -> list[Atoms]:
        """Return new structures, each with ``atoms.info['provenance']`` set."""


@runtime_checkable
class DescriptorCalculator(Protocol):
    """Maps one structure to a fixed-length, rotation/permutation-invariant vector."""

    name: str

    def compute(self, atoms: Atoms) -> np.ndarray:
        """Pooled per-structure descriptor, shape (n_features,)."""


@runtime_checkable
class Selector(Protocol):
    """Chooses ``n`` diverse rows of a descriptor matrix; deterministic for a seed."""

    def select(self, X: np.ndarray, n: int, seed: int) -> np.ndarray:
        """Indices (sorted, unique) of the chosen rows."""


@runtime_checkable
class Oracle(Protocol):
    """Labels one structure at a time; a failure is a FAILED Label, never an exception."""

    name: str

    def label(self, atoms: Atoms, workdir: str) -> Label:
        ...


@runtime_checkable
class SurrogateOracle(Protocol):
    """A cheap ML oracle (a MACE committee): batched labels plus its own uncertainty."""

    name: str

    def label_batch(self, structures: Sequence[Atoms]) -> list[Label]:
        ...

    def uncertainty(self, structures: Sequence[Atoms]) -> Uncertainty:
        ...


@runtime_checkable
class Trainer(Protocol):
    """Fits a potential to a labelled set (fit/predict discipline of scikit-learn:
    ``fit`` returns the model, it does not mutate global state)."""

    def fit(self, train: LabelledSet, workdir: str, *, initial: TrainedModel | None = None,
            name: str = "model") -> TrainedModel:
        ...
