"""Per-structure descriptors for DIRECT sampling: MACE invariant features or ACE B-basis
projections, pooled over atoms into one fixed-length vector.

Both are rotation-, translation- and permutation-invariant by construction (invariant
per-atom features, order-free pooling). MACE features are what the teacher "sees"; ACE
projections are what the student can fit (and cost ~100x less). Objects are rebuilt from
plain arguments (``spec``), so they pickle cheaply to any MPI rank without the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from ase import Atoms

POOLINGS = ("mean", "std", "max", "min")

#: alias kept from the config schema: ``mace_mp(model=None)`` would give medium-mpa-0
_FOUNDATION_ALIASES = {"MACE-MP-0": "medium"}


def pool(per_atom: np.ndarray, pooling: Sequence[str]) -> np.ndarray:
    """Concatenate the listed statistics (mean, std, max, min) over atoms (axis 0)."""
    x = np.asarray(per_atom, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"per-atom features must be (n_atoms>0, n_features), got {x.shape}")
    f = {"mean": lambda a: a.mean(0), "std": lambda a: a.std(0),
         "max": lambda a: a.max(0), "min": lambda a: a.min(0)}
    return np.concatenate([f[p](x) for p in pooling])


def _check_pooling(pooling: Iterable[str]) -> tuple[str, ...]:
    p = tuple(pooling)
    bad = [x for x in p if x not in POOLINGS]
    if not p or bad:
        raise ValueError(f"pooling must be a non-empty subset of {POOLINGS}, got {list(p)}")
    return p


class _Base:
    name: str
    pooling: tuple[str, ...]

    def compute(self, atoms: Atoms) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_many(self, structures: Sequence[Atoms]) -> np.ndarray:
        """(n_structures, n_features) float64."""
        rows = [self.compute(a) for a in structures]
        if not rows:
            return np.zeros((0, 0))
        return np.vstack(rows)

    def __reduce__(self):  # rebuild from plain arguments on the receiving rank
        return (self.__class__._from_spec, (self.spec,))

    @classmethod
    def _from_spec(cls, spec: dict):
        return cls(**spec)


# ----------------------------------------------------------------------------------------
class MaceDescriptor(_Base):
    """Invariant node features of a MACE model (all layers), pooled per structure.

    ``model``: a ``.model`` file, or a foundation name (``medium``, ``MACE-MP-0``, ...)
    resolved by ``mace.calculators.mace_mp`` (which may download the weights).
    """

    def __init__(self, model: str, pooling=("mean", "std"), device: str = "cpu",
                 default_dtype: str = "float64"):
        self.model = str(model)
        self.pooling = _check_pooling(pooling)
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.default_dtype = default_dtype
        self.spec = dict(model=self.model, pooling=self.pooling, device=device,
                         default_dtype=default_dtype)
        self.name = f"mace:{Path(self.model).name}:{'+'.join(self.pooling)}"
        if Path(self.model).is_file():
            from mace.calculators import MACECalculator

            self.calc = MACECalculator(model_paths=[self.model], device=device,
                                       default_dtype=default_dtype)
        else:
            from ..config import is_foundation_name

            if not is_foundation_name(self.model):
                raise FileNotFoundError(f"MACE model: neither a file nor a foundation name: {self.model}")
            from mace.calculators import mace_mp

            self.calc = mace_mp(model=_FOUNDATION_ALIASES.get(self.model, self.model),
                                device=device, default_dtype=default_dtype)

    def per_atom(self, atoms: Atoms) -> np.ndarray:
        """(n_atoms, n_features) invariant features."""
        return np.asarray(self.calc.get_descriptors(atoms, invariants_only=True), dtype=np.float64)

    def compute(self, atoms: Atoms) -> np.ndarray:
        return pool(self.per_atom(atoms), self.pooling)


# ----------------------------------------------------------------------------------------
#: a small fixed B-basis (pacemaker potential-section syntax): 48 functions per element
#: (body orders 2-4), plus 26 per species pair (and 18 per triple) centred on each atom,
#: i.e. 48 / 74 / 118 projections per atom for unary / binary / ternary systems.
ACE_FUNCTIONS = {
    "UNARY": {"nradmax_by_orders": [8, 4, 2], "lmax_by_orders": [0, 2, 1]},
    "ALL": {"nradmax_by_orders": [4, 2, 1], "lmax_by_orders": [0, 1, 1]},
}


def ace_basis_config(elements: Sequence[str], cutoff: float = 5.0, functions: dict | None = None,
                     coefs: str = "zero"):
    """A pyace BBasisConfiguration for ``elements``. Coefficients are zero by default:
    the projections do not depend on them (checked in the tests with ``coefs="random"``)."""
    from pyace import create_multispecies_basis_config

    pot = {
        "deltaSplineBins": 0.001,
        "elements": sorted(elements),
        "embeddings": {"ALL": {"npot": "FinnisSinclairShiftedScaled", "fs_parameters": [1, 1],
                               "ndensity": 1}},
        "bonds": {"ALL": {"radbase": "SBessel", "radparameters": [5.25], "rcut": float(cutoff),
                          "dcut": 0.01}},
        "functions": functions or ACE_FUNCTIONS,
    }
    return create_multispecies_basis_config(pot, func_coefs_initializer=coefs)


class AceDescriptor(_Base):
    """ACE B-basis projections (pyace ``PyACECalculator.projections``), pooled per element.

    Each atom's row holds the basis functions centred on its own species, so rows of
    different species are different functions: statistics are taken per species and
    concatenated in ``elements`` order (zeros when a species is absent), followed by the
    composition fractions when there is more than one element.
    """

    def __init__(self, elements: Sequence[str], pooling=("mean", "std"), cutoff: float = 5.0,
                 functions: dict | None = None):
        from pyace import PyACECalculator

        self.elements = list(elements)
        self.pooling = _check_pooling(pooling)
        self.cutoff = float(cutoff)
        self.functions = functions
        self.spec = dict(elements=self.elements, pooling=self.pooling, cutoff=self.cutoff,
                         functions=functions)
        self.basis = ace_basis_config(self.elements, self.cutoff, functions)
        self.calc = PyACECalculator(self.basis)
        self.n_functions = self._width()
        self.name = f"ace:{'-'.join(self.elements)}:rc{self.cutoff:g}:{self.n_functions}f:{'+'.join(self.pooling)}"

    def _width(self) -> int:
        widths = set()
        for el in self.elements:
            at = Atoms(el, cell=np.eye(3) * 20.0, pbc=True)
            widths.add(self.per_atom(at).shape[1])
        if len(widths) != 1:
            raise ValueError(f"ACE basis has a different number of functions per element: {widths}")
        return widths.pop()

    def per_atom(self, atoms: Atoms) -> np.ndarray:
        """(n_atoms, n_functions) B-basis projections (rows: functions of that atom's species)."""
        at = atoms.copy()
        at.calc = None
        self.calc.reset()
        at.calc = self.calc
        at.get_potential_energy()
        return np.array(self.calc.projections, dtype=np.float64)

    def compute(self, atoms: Atoms) -> np.ndarray:
        proj = self.per_atom(atoms)
        sym = np.array(atoms.get_chemical_symbols())
        if len(self.elements) == 1:
            return pool(proj, self.pooling)
        width = len(self.pooling) * proj.shape[1]
        parts = []
        for el in self.elements:
            rows = proj[sym == el]
            parts.append(pool(rows, self.pooling) if len(rows) else np.zeros(width))
        frac = np.array([np.mean(sym == el) for el in self.elements])
        return np.concatenate(parts + [frac])


# ----------------------------------------------------------------------------------------
def make_descriptor(kind: str, pooling=("mean", "std"), *, mace_model: str | None = None,
                    elements: list[str], device: str = "cpu", dtype: str = "float64",
                    cutoff: float = 5.0):
    """The descriptor of ``descriptors.kind`` ("mace" | "ace") from plain arguments, so
    any rank can build its own copy."""
    kind = kind.lower()
    if kind == "mace":
        if not mace_model:
            raise ValueError("descriptor kind 'mace' needs a MACE model (file or foundation name)")
        return MaceDescriptor(mace_model, pooling=pooling, device=device, default_dtype=dtype)
    if kind == "ace":
        return AceDescriptor(elements, pooling=pooling, cutoff=cutoff)
    raise ValueError(f"unknown descriptor kind {kind!r} (expected 'mace' or 'ace')")
