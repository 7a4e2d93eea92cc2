"""Extrapolation grades (D-optimality, pace_activeset's .asi) of an ACE model.

gamma ~ 1 or below: the atom's environment lies inside the span of the training set's
active set; gamma >> 1: extrapolation.  Thresholds in use: save a structure for DFT above
~5 and stop MD above ~25 (pacemaker docs); 1.5 (GRACE tutorial); 2/15 (pyace exploration).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from ..core.models import TrainedModel
from .pacemaker import ace_calculator


def extrapolation_grades(model: TrainedModel, structures: Sequence[Atoms], workdir: str) -> np.ndarray:
    """Max extrapolation grade gamma over the atoms of each structure, shape (n_structures,).

    Uses the model's B-basis .yaml with its .asi through pyace's ``PyACECalculator``
    (``set_active_set``; per-atom ``calc.results['gamma']``).  Raises ValueError when the
    model has no active set.
    """
    calc = ace_calculator(model, workdir, with_active_set=True)
    out = np.empty(len(structures), dtype=float)
    for k, at in enumerate(structures):
        a = at.copy()
        a.calc = calc
        a.get_potential_energy()
        gamma = np.asarray(calc.results["gamma"], dtype=float)
        out[k] = float(gamma.max()) if gamma.size else 0.0
    return out
