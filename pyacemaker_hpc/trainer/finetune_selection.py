"""Choose the fine-tuning loss by validation on the user's own DFT labels, not by hand.

The loss weights decide the teacher: force-heavy weights leave tens of meV/atom of energy
scatter across strained cells, energy-heavy ones cost force accuracy, and which balance is
best depends on the system, the foundation and the number of labels. With few labels a
single validation split is a coin toss, so every candidate is scored by K-fold cross
validation (each structure is validated on exactly once): fine-tune on K-1 folds, read
mace's own validation RMSE on the held-back fold, average over folds. Energy and force
errors are put on one scale by dividing each by the best candidate's value, so the score
of the winner is at least 2 and a candidate that is 10 % worse on both scores 2.2.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.models import LabelledSet, TrainedModel

log = logging.getLogger(__name__)

ENERGY, FORCES = "valid_rmse_e_meV_per_atom", "valid_rmse_f_meV_per_A"


def kfold(n: int, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint validation index sets covering ``range(n)`` (shuffled by ``seed``)."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(order, min(k, n))]


def score(table: list[dict]) -> list[float]:
    """Energy and force CV errors, each divided by the best candidate's, summed."""
    e_best = min(r["cv_energy_meV_atom"] for r in table)
    f_best = min(r["cv_forces_meV_A"] for r in table)
    return [r["cv_energy_meV_atom"] / max(e_best, 1e-9) + r["cv_forces_meV_A"] / max(f_best, 1e-9)
            for r in table]


def select_finetune_loss(fit: Callable[[dict, LabelledSet, LabelledSet, str], TrainedModel],
                         data: LabelledSet, candidates: list[dict], workdir: str, *,
                         folds: int = 3, seed: int = 0, what: str = "fine-tuning loss") -> tuple[dict, list[dict]]:
    """Cross-validate each candidate (a dict of FinetuneCfg overrides) and return the best
    one and the table (per candidate: its overrides, CV energy/force RMSE, score).

    ``fit(overrides, train, valid, workdir)`` fine-tunes and returns the model whose metrics
    hold mace's validation RMSE (``MaceFinetuner.fit(..., valid=...)`` does). Any other
    fit with those two metrics works the same way (step 7's ``weight_dft``, ``what``).
    """
    data = data.usable()
    if len(data) < 2:
        raise ValueError(f"choosing the {what} by validation needs at least 2 DFT labels")
    splits = kfold(len(data), folds, seed)
    table = []
    for c, overrides in enumerate(candidates):
        errs = []
        for j, val in enumerate(splits):
            train = data.subset(sorted(set(range(len(data))) - set(val.tolist())))
            model = fit(dict(overrides), train, data.subset([int(i) for i in val]),
                        str(Path(workdir) / f"candidate{c}_fold{j}"))
            errs.append((model.metrics[ENERGY], model.metrics[FORCES], len(val)))
        w = np.array([n for _, _, n in errs], dtype=float)
        # fold RMSEs combined as the RMSE over all validated structures
        e = float(np.sqrt(np.sum(w * np.array([x for x, _, _ in errs]) ** 2) / w.sum()))
        f = float(np.sqrt(np.sum(w * np.array([y for _, y, _ in errs]) ** 2) / w.sum()))
        table.append({"overrides": dict(overrides), "cv_energy_meV_atom": e, "cv_forces_meV_A": f,
                      "folds": len(splits)})
        log.info("%s candidate %s: CV energy %.1f meV/atom, forces %.1f meV/A", what, overrides, e, f)
    for r, s in zip(table, score(table)):
        r["score"] = s
    best = min(range(len(table)), key=lambda i: table[i]["score"])
    table[best]["chosen"] = True
    return dict(candidates[best]), table
