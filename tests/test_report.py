"""The HTML report: the committee's uncertainty against the actual error (plot + Spearman
rho), learning curves, step status. Campaigns are written through the Campaign API and the
evaluate step's own helpers, so these run in seconds; one test runs the real step-2
committee path (tiny MACE models, serial farm) that the evaluate step uses."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pyacemaker_hpc.campaign import Campaign
from pyacemaker_hpc.core.models import Label, LabelledSet, Uncertainty
from pyacemaker_hpc.report import benchmark_curves, status_text, write_report
from pyacemaker_hpc.steps.evaluate import (errors, per_structure_errors, spearman, store_uncertainty,
                                           uncertainty_summary)
from pyacemaker_hpc.tools.toy_data import label_with, perturbed_bulk

N = 10


def _noisy(ls: LabelledSet, scales, seed: int = 0) -> list[Label]:
    """Predictions = the reference plus force noise of a per-structure scale (a model that is
    wrong by different amounts on different structures) and a constant energy offset; the
    model predicts where DFT failed too."""
    rng = np.random.default_rng(seed)
    out = []
    for at, lab, s in zip(ls.structures, ls.labels, scales):
        f = lab.forces if lab.forces is not None else np.zeros((len(at), 3))
        e = lab.energy if np.isfinite(lab.energy) else 0.0
        out.append(Label(energy=e + 0.05 * len(at), forces=f + rng.normal(0, s, f.shape)))
    return out


def _holdout() -> LabelledSet:
    ls = label_with(perturbed_bulk("Cu", n=N, seed=0, a=3.6))  # EMT plays DFT
    ls.labels[3] = Label.failed("scf_not_converged: test")  # a failed DFT item stays aligned
    return ls


def _write_campaign(camp: Campaign, ho: LabelledSet, unc: Uncertainty, pred: list[Label]) -> dict:
    """What the evaluate step leaves in a campaign, written through the same helpers."""
    camp.set_step("step2_active_learning", status="done", seconds=12.5)
    camp.set_step("evaluate", status="done", seconds=3.0)
    camp.write_structures("holdout", ho.structures)
    for source, labels in (("dft", ho.labels), ("foundation", pred)):
        camp.init_labels("holdout", source)
        camp.put_labels("holdout", source, dict(enumerate(labels)))
    err = per_structure_errors(ho, pred)
    store_uncertainty(camp, unc, err)
    summary = {"n_holdout": N - 1, "n_dft_training": 6, "uncertainty": uncertainty_summary(unc, err, 3),
               "models": {"foundation MACE": {**errors(ho, pred), "n_dft_labels": 0},
                          "final ACE": {**errors(ho, _noisy(ho, np.full(N, 0.02), seed=1)), "n_dft_labels": 6}}}
    camp.write_json("metrics/evaluation", summary)
    return summary


def test_per_structure_errors_stay_aligned_and_skip_failed_items():
    ho = _holdout()
    pred = _noisy(ho, np.linspace(0.01, 0.5, N))
    err = per_structure_errors(ho, pred)
    assert all(len(v) == N for v in err.values())
    assert np.isnan(err["max_force_error"][3]) and np.isfinite(np.delete(err["max_force_error"], 3)).all()
    # the constant per-atom energy offset is no error the spread could see
    assert np.nanmax(err["abs_energy_error"]) < 1e-9
    i = 5
    d = pred[i].forces - ho.labels[i].forces
    assert err["max_force_error"][i] == pytest.approx(np.linalg.norm(d, axis=1).max())


def test_spearman_is_none_where_undefined():
    assert spearman([0, 0, 0, 0], [1, 2, 3, 4]) is None  # a one-member committee: no spread
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 2, np.nan, 4, 5], [2, 4, 1, 8, 10]) == pytest.approx(1.0)


def test_report_has_uncertainty_plot_spearman_and_learning_curves(tmp_path):
    ho = _holdout()
    scales = np.linspace(0.01, 0.5, N)
    pred = _noisy(ho, scales)
    rng = np.random.default_rng(2)
    unc = Uncertainty(energy_std=rng.uniform(1e-3, 1e-2, N), force_std=scales * rng.uniform(0.8, 1.2, N))
    (tmp_path / "learning_curve.json").write_text(json.dumps({"rows": [
        {"N": n, "method": "dft-only", "model": "DFT-only ACE", "seed": s, "F_rmse": 100.0 / n + s, "E_rmse": 5.0}
        for n in (10, 20, 40) for s in (0, 1)]}))
    with Campaign(tmp_path / "campaign.h5") as camp:
        summary = _write_campaign(camp, ho, unc, pred)
        rho = summary["uncertainty"]["spearman_force_std_vs_max_force_error"]
        assert summary["uncertainty"]["n"] == N - 1 and rho > 0.5
        out = write_report(camp, str(tmp_path / "report.html"))
        text = status_text(camp)
    page = open(out).read()
    assert "Uncertainty vs error (held-out DFT)" in page
    assert f"Spearman rho {rho:.2f}" in page and f"Spearman rho {rho:.2f}" in text
    assert "Learning curve: this campaign" in page and "Learning curve: learning_curve.json" in page
    assert "step2_active_learning" in page and "DFT holdout: 9 done, 1 failed" in page
    # parity (foundation, 1) + uncertainty + 2 learning curves, each a PNG in the page
    assert len(re.findall(r"data:image/png;base64,", page)) == 4
    curves = benchmark_curves(tmp_path / "learning_curve.json")
    assert curves["dft-only: DFT-only ACE"][0] == pytest.approx((10.0, 10.5, 5.0))  # mean over seeds


def test_report_says_when_the_committee_has_no_spread(tmp_path):
    ho = _holdout()
    pred = _noisy(ho, np.linspace(0.01, 0.5, N))
    with Campaign(tmp_path / "campaign.h5") as camp:
        _write_campaign(camp, ho, Uncertainty(np.zeros(N), np.zeros(N)), pred)
        page = open(write_report(camp)).read()
    assert "Spearman rho undefined" in page


def test_evaluate_records_the_step2_committee_against_its_first_member(tmp_path, tiny_mace_model,
                                                                        tiny_mace_committee):
    """The real path: step 2's committee farmed on the mace role (serial here), the first
    member's predictions, arrays and rho in the campaign, the plot in the report."""
    from pyacemaker_hpc.config import parse_config
    from pyacemaker_hpc.oracle.mace_surrogate import MaceCommittee
    from pyacemaker_hpc.parallel import Farm, Team
    from pyacemaker_hpc.steps.context import StepContext
    from pyacemaker_hpc.steps.evaluate import mace_predictions, uncertainty_vs_error

    members = [str(tiny_mace_model), *map(str, tiny_mace_committee)]
    cfg = parse_config({"system": {"elements": ["Cu"], "prototypes": [{"element": "Cu"}]},
                        "distillation": {"step2_active_learning": {"dft_calculator": "ASE"},
                                         "step3_mace_finetune": {"base_model": members[0]}},
                        "mace": {"committee": members[1:], "device": "cpu"}})
    ho = label_with(perturbed_bulk("Cu", n=6, seed=5, a=3.6))
    with Campaign(tmp_path / "campaign.h5") as camp:
        camp.write_structures("holdout", ho.structures)
        ctx = StepContext(cfg, camp, Farm(Team.create({})), tmp_path / "work", tmp_path / "out")
        first = mace_predictions(ctx, members[0], ho.structures)
        summary = uncertainty_vs_error(ctx, ho, first)
        camp.write_json("metrics/evaluation", {"models": {"foundation MACE": {**errors(ho, first), "n_dft_labels": 0}},
                                               "uncertainty": summary, "n_holdout": 6, "n_dft_training": 0})
        force_std = camp.read_array("metrics/holdout_uncertainty/force_std")
        max_err = camp.read_array("metrics/holdout_uncertainty/max_force_error")
        page = open(write_report(camp)).read()
    direct = MaceCommittee(members).uncertainty(ho.structures)
    np.testing.assert_allclose(force_std, direct.force_std, rtol=1e-8)  # step 2's own numbers
    assert summary["committee_size"] == 3 and summary["n"] == 6 and len(max_err) == 6
    rho = summary["spearman_force_std_vs_max_force_error"]
    assert rho is not None and -1.0 <= rho <= 1.0
    assert f"Spearman rho {rho:.2f}" in page and "Uncertainty vs error" in page
