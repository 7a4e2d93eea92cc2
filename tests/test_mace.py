"""MaceCommittee (batched labels, uncertainty), MD sampling, MaceFinetuner, model resolution.

Everything runs on the tiny real MACE models of conftest (trained on the fly on EMT Cu);
nothing is downloaded. The demo-foundation check runs when the shipped models exist.
"""
from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

from pyacemaker_hpc.config import FinetuneCfg, MdCfg, closest_pair_violation
from pyacemaker_hpc.core.models import LabelledSet, TrainedModel
from pyacemaker_hpc.oracle import mace_surrogate as ms
from pyacemaker_hpc.oracle.mace_surrogate import (MaceCommittee, ModelLoadError, pick_device,
                                                  resolve_model, run_md_replica)
from pyacemaker_hpc.tools.toy_data import label_with, perturbed_bulk
from pyacemaker_hpc.trainer.mace_finetune import (MaceFinetuner, MaceTrainError,
                                                  foundation_replay_set, parse_e0s,
                                                  parse_error_table)

torch.set_num_threads(1)
DATA = Path(__file__).resolve().parents[1] / "pyacemaker_hpc" / "data"


def _compressed_rattled(n: int, compress: float, rattle: float, seed: int = 0):
    out = []
    for k in range(n):
        a = bulk("Cu", cubic=True)
        a.set_cell(a.cell * (1 - compress), scale_atoms=True)
        a.rattle(rattle, seed=seed + k)
        out.append(a)
    return out


def _mixed_cells():
    """Cells of 1, 2, 4, 8 and 16 atoms, strained and rattled, plus one isolated cluster."""
    cells = [bulk("Cu"), bulk("Cu").repeat((2, 1, 1)), *perturbed_bulk("Cu", n=3, seed=3),
             *perturbed_bulk("Cu", n=2, seed=4, repeat=(2, 1, 1)),
             *perturbed_bulk("Cu", n=1, seed=5, repeat=(2, 2, 1))]
    cluster = bulk("Cu", cubic=True)
    cluster.pbc = False
    cluster.cell = [0, 0, 0]
    cluster.rattle(0.05, seed=1)
    return cells + [cluster]


# ----------------------------------------------------------------------------------------
# uncertainty
def test_identical_members_have_zero_spread(tiny_mace_model):
    comm = MaceCommittee([str(tiny_mace_model)] * 2)
    u = comm.uncertainty(perturbed_bulk("Cu", n=4, seed=7) + _compressed_rattled(2, 0.1, 0.3))
    # zero up to the float64 round-off of torch's threaded scatter sums (CI saw 8e-17)
    assert np.allclose(u.energy_std, 0.0, rtol=0, atol=1e-12)
    assert np.allclose(u.force_std, 0.0, rtol=0, atol=1e-12)


def test_single_member_uncertainty_is_zeros(tiny_mace_model):
    u = MaceCommittee([str(tiny_mace_model)]).uncertainty(perturbed_bulk("Cu", n=3, seed=1))
    assert u.energy_std.shape == (3,) and not u.energy_std.any() and not u.force_std.any()


def test_committee_spread_grows_off_distribution(tiny_mace_committee):
    comm = MaceCommittee([str(p) for p in tiny_mace_committee])
    train_like = perturbed_bulk("Cu", n=10, seed=99)  # what the members were trained on
    # the conftest members had 3 epochs on 24 cells: their spread is large everywhere, so
    # "off-distribution" must be clearly off: 25 % compression and 0.3 A rattles
    far = _compressed_rattled(10, 0.25, 0.3)
    u_in, u_out = comm.uncertainty(train_like), comm.uncertainty(far)
    assert np.all(u_in.force_std > 0) and np.all(u_in.energy_std > 0)
    assert u_out.force_std.mean() > 1.3 * u_in.force_std.mean()
    # the definition of core.models.Uncertainty, recomputed from predict_all
    e, f, _ = comm.predict_all(far)
    ref = max(np.sqrt(np.var(np.stack([f[0][0], f[1][0]]), axis=0).sum(axis=1)))
    assert u_out.force_std[0] == pytest.approx(ref, rel=1e-12)
    assert u_out.energy_std[0] == pytest.approx(np.std(e[:, 0] / 4), rel=1e-12)


@pytest.mark.skipif(not (DATA / "cu_demo_foundation_s2.model").is_file(),
                    reason="demo foundation not built (scripts/build_demo_foundation.py)")
def test_demo_foundation_committee_spread_grows_off_distribution():
    comm = MaceCommittee([str(DATA / f"cu_demo_foundation_s{s}.model") for s in (0, 1, 2)])
    train_like = perturbed_bulk("Cu", n=8, seed=3, a=3.55, strain=0.04, rattle=(0.03, 0.1))
    u_in = comm.uncertainty(train_like)
    u_comp = comm.uncertainty(_compressed_rattled(8, 0.10, 0.05))
    u_ratt = comm.uncertainty(_compressed_rattled(8, 0.0, 0.35))
    assert u_comp.energy_std.mean() > 2 * u_in.energy_std.mean()
    assert u_ratt.force_std.mean() > 2 * u_in.force_std.mean()


# ----------------------------------------------------------------------------------------
# labels
def test_batched_labels_match_the_ase_calculator(tiny_mace_model):
    torch.set_default_dtype(torch.float32)  # mace must not leave its dtype behind
    comm = MaceCommittee([str(tiny_mace_model)], batch_size=4)
    cells = _mixed_cells()
    labels = comm.label_batch(cells)
    assert torch.get_default_dtype() == torch.float32
    calc = comm.calculator()
    for at, lab in zip(cells, labels):
        a = at.copy()
        a.calc = calc
        assert lab.ok
        assert abs(a.get_potential_energy() - lab.energy) < 1e-6
        assert np.abs(a.get_forces() - lab.forces).max() < 1e-6
        if all(at.pbc):
            assert np.abs(a.get_stress(voigt=True) - lab.stress).max() < 1e-6
        else:
            assert lab.stress is None
    assert torch.get_default_dtype() == torch.float32
    assert comm.label_batch([]) == []
    e, f, s = MaceCommittee([str(tiny_mace_model)] * 2).predict_all(cells)
    assert e.shape == (2, len(cells)) and s.shape == (2, len(cells), 6)
    assert [x.shape for x in f[1]] == [(len(c), 3) for c in cells]


@pytest.mark.skipif(not (DATA / "cu_demo_foundation_s1.model").is_file(),
                    reason="demo foundation not built (scripts/build_demo_foundation.py)")
def test_mean_labels_are_the_members_mean():
    """mace.teacher: mean labels with the members' mean energy, forces and stress."""
    paths = [str(DATA / f"cu_demo_foundation_s{s}.model") for s in (0, 1)]
    cells = perturbed_bulk("Cu", n=3, seed=5, a=3.6, strain=0.03, rattle=(0.05, 0.1))
    mean = MaceCommittee(paths).label_batch(cells, mean=True)
    each = [MaceCommittee([p]).label_batch(cells) for p in paths]
    assert MaceCommittee(paths).label_batch(cells)[0].energy == each[0][0].energy  # default: the first
    for i, lab in enumerate(mean):
        assert lab.energy == pytest.approx((each[0][i].energy + each[1][i].energy) / 2, abs=1e-9)
        np.testing.assert_allclose(lab.forces, (each[0][i].forces + each[1][i].forces) / 2, atol=1e-9)
        np.testing.assert_allclose(lab.stress, (each[0][i].stress + each[1][i].stress) / 2, atol=1e-12)
    assert abs(each[0][0].energy - each[1][0].energy) > 1e-6  # the members differ: the test can fail


def test_unknown_element_is_a_clear_error(tiny_mace_model):
    with pytest.raises(ValueError, match="unknown to MACE model"):
        MaceCommittee([str(tiny_mace_model)]).label_batch([bulk("Al")])


# ----------------------------------------------------------------------------------------
# MD
def test_md_replica_frames_are_physical(tiny_mace_model, tiny_mace_committee):
    md = MdCfg(steps=40, timestep_fs=2.0, sample_interval=10, max_force=20.0,
               min_distance_factor=0.6)
    start = bulk("Cu", cubic=True).repeat((2, 1, 1))
    frames, counts = run_md_replica(str(tiny_mace_model), start, temperature=300.0, strain=0.01,
                                    md=md, seed=5)
    assert counts["sampled"] == 4
    discards = sum(counts[k] for k in ("non_finite", "min_distance", "max_force", "force_std"))
    assert counts["kept"] + discards == counts["sampled"] == len(frames) + discards
    for k, fr in enumerate(frames):
        assert np.all(np.isfinite(fr.positions)) and fr.calc is None
        assert closest_pair_violation(fr, md.min_distance_factor) is None
        assert fr.info["provenance"] == f"md:T300:eps0.01:seed5:step{10 * (k + 1)}"
    assert frames and not np.allclose(frames[0].positions, start.positions * 1.01)
    assert frames[0].cell.volume == pytest.approx(start.cell.volume * 1.01 ** 3)

    # a committee cut far below the tiny members' spread discards every frame, and says so
    md_cut = md.model_copy(update={"max_force_std": 1e-3})
    frames2, counts2 = run_md_replica(str(tiny_mace_model), start, temperature=300.0, strain=0.0,
                                      md=md_cut, seed=5,
                                      committee=[str(p) for p in tiny_mace_committee])
    assert frames2 == [] and counts2["force_std"] == counts2["sampled"] == 4


# ----------------------------------------------------------------------------------------
# fine-tuning
def test_naive_finetune_returns_a_loadable_different_model(tiny_mace_model, tmp_path):
    data = label_with(perturbed_bulk("Cu", n=6, seed=11, strain=0.08))
    cfg = FinetuneCfg(method="naive", e0s="foundation", batch_size=2)
    model = MaceFinetuner(str(tiny_mace_model), 2, cfg).fit(data, tmp_path / "ft", name="ft")
    assert isinstance(model, TrainedModel) and model.kind == "mace"
    for key in ("valid_rmse_e_meV_per_atom", "valid_rmse_f_meV_per_A",
                "initial_valid_rmse_e_meV_per_atom", "e0_Z29", "n_train", "n_valid"):
        assert np.isfinite(model.metrics[key]), key
    assert model.metrics["n_train"] + model.metrics["n_valid"] == 6
    cmd = json.loads((tmp_path / "ft" / "command.json").read_text())
    assert cmd[cmd.index("--multiheads_finetuning") + 1] == "False" and "--ema" not in cmd
    assert cmd[cmd.index("--stress_key") + 1] == "REF_stress"
    assert cmd[cmd.index("--max_num_epochs") + 1] == "2"

    path = model.write(tmp_path / "out")[".model"]
    base = MaceCommittee([str(tiny_mace_model)]).label_batch(data.structures)
    tuned = MaceCommittee([path]).label_batch(data.structures)
    assert max(abs(a.energy - b.energy) for a, b in zip(base, tuned)) > 1e-3
    assert max(np.abs(a.forces - b.forces).max() for a, b in zip(base, tuned)) > 1e-3

    # continue from the fine-tuned model (initial=): the same architecture, valid given
    again = MaceFinetuner(str(tiny_mace_model), 1, cfg).fit(
        data, tmp_path / "ft2", initial=model, valid=label_with(perturbed_bulk("Cu", n=2, seed=12)))
    assert again.metrics["n_valid"] == 2 and again.metrics["n_train"] == 6


def test_multihead_finetune_with_offline_replay(tiny_mace_model, tmp_path):
    data = label_with(perturbed_bulk("Cu", n=5, seed=21))
    replay = foundation_replay_set(str(tiny_mace_model), perturbed_bulk("Cu", n=6, seed=22))
    cfg = FinetuneCfg(method="multihead", e0s="estimated", batch_size=2, ema_decay=0.95)
    with pytest.raises(MaceTrainError, match="replay"):
        MaceFinetuner(str(tiny_mace_model), 1, cfg).fit(data, tmp_path / "none")
    model = MaceFinetuner(str(tiny_mace_model), 1, cfg, replay=replay).fit(data, tmp_path / "mh")
    cmd = json.loads((tmp_path / "mh" / "command.json").read_text())
    assert cmd[cmd.index("--multiheads_finetuning") + 1] == "True"
    assert cmd[cmd.index("--pt_train_file") + 1] == "replay.xyz"
    assert cmd[cmd.index("--E0s") + 1] == "estimated"
    assert cmd[cmd.index("--ema") + 1 : cmd.index("--ema") + 3] == ["--ema_decay", "0.95"]
    assert "Exponential Moving Average with decay: 0.95" in (tmp_path / "mh" / "mace_run_train.out").read_text()
    assert model.metrics["multihead"] == 1.0 and model.metrics["n_replay"] == 6
    comm = MaceCommittee([model.write(tmp_path / "out")[".model"]])
    assert comm._meta[0]["heads"] == ["Default"]  # shipped with the replay head removed
    assert all(lab.ok for lab in comm.label_batch(data.structures))


def test_naive_finetune_trains_with_the_e0s_it_was_given(tiny_cuau_mace, tmp_path):
    """DFT with another energy reference (+0.4 eV per Cu, -0.3 per Au atom): ``estimated``
    E0s put the fine-tuning's first evaluation near the data; the foundation's would leave
    the whole offset. mace alone silently kept the foundation's buffer for a foundation
    that holds exactly the user's elements."""
    from conftest import cu_au_cells

    data = label_with(cu_au_cells(6, seed=31))
    shift = {"Cu": 0.4, "Au": -0.3}
    data = LabelledSet(data.structures, [
        replace(lab, energy=lab.energy + sum(shift[s] for s in at.get_chemical_symbols()))
        for at, lab in zip(data.structures, data.labels)])
    runs = {}
    for e0s in ("foundation", "estimated", '{"Cu": 1.0, "Au": -2.0}'):
        cfg = FinetuneCfg(method="naive", e0s=e0s, batch_size=2, valid_fraction=0)
        wd = tmp_path / str(len(runs))
        runs[e0s] = MaceFinetuner(str(tiny_cuau_mace), 1, cfg).fit(data, wd, name="ft")
        if e0s != "foundation":
            cmd = json.loads((wd / "command.json").read_text())
            assert cmd[cmd.index("--E0s") + 1] == "foundation"  # baked into the copy it names
            assert cmd[cmd.index("--foundation_model") + 1].endswith("foundation_e0s.model")
    # mace's rule: the foundation's E0s plus the least-squares per-element correction of its
    # predictions on the training set
    found = torch.load(tiny_cuau_mace, weights_only=False).atomic_energies_fn.atomic_energies.ravel()
    pred = MaceCommittee([str(tiny_cuau_mace)]).label_batch(data.structures)
    counts = np.array([[at.get_chemical_symbols().count(el) for el in ("Cu", "Au")] for at in data.structures])
    corr = np.linalg.lstsq(counts, [d.energy - p.energy for d, p in zip(data.labels, pred)], rcond=None)[0]
    est = json.loads((tmp_path / "1" / "e0s.json").read_text())["e0s"]
    assert [est["29"], est["79"]] == pytest.approx((found.numpy() + corr).tolist(), abs=1e-6)
    for e0s, want in (("estimated", [est["29"], est["79"]]), ('{"Cu": 1.0, "Au": -2.0}', [1.0, -2.0])):
        model = runs[e0s].write(tmp_path / f"out{len(want)}{e0s[:3]}")[".model"]
        got = torch.load(model, weights_only=False).atomic_energies_fn.atomic_energies.ravel()
        assert got.tolist() == pytest.approx(want)  # the E0s it trained with are the ones asked
    assert runs["estimated"].metrics["e0_Z29"] == pytest.approx(est["29"])
    initial = {k: m.metrics["initial_valid_rmse_e_meV_per_atom"] for k, m in runs.items()}
    with pytest.raises(MaceTrainError, match=r"no E0 for Z=\[79\]"):  # before mace starts
        MaceFinetuner(str(tiny_cuau_mace), 1, FinetuneCfg(method="naive", e0s='{"Cu": 1.0}')).fit(
            data, tmp_path / "missing", name="ft")
    assert initial["foundation"] > 150 and initial["estimated"] < initial["foundation"] / 3, initial


def test_e0s_choices():
    with pytest.raises(ValueError, match="multihead"):
        MaceFinetuner("x.model", 1, FinetuneCfg(method="multihead", e0s="average"))
    assert parse_e0s("average", "naive") == "average"
    assert parse_e0s("Estimated", "multihead") == "estimated"
    assert parse_e0s('{"Cu": -0.25}', "multihead") == "{29: -0.25}"
    assert parse_e0s("{29: -0.25, 13: -0.1}", "naive") == "{13: -0.1, 29: -0.25}"
    with pytest.raises(ValueError, match="e0s"):
        parse_e0s("isolated", "naive")
    with pytest.raises(ValueError, match="unknown element"):
        parse_e0s('{"Xx": 1.0}', "naive")


def test_mace_failure_carries_mace_error(tiny_mace_model, tmp_path):
    fake = tmp_path / "mace_run_train"
    fake.write_text("#!/bin/sh\necho 'INFO: starting'\necho 'Traceback (most recent call last):'\n"
                    "echo 'ValueError: something mace said' >&2\nexit 3\n")
    fake.chmod(0o755)
    data = label_with(perturbed_bulk("Cu", n=3, seed=1))
    ft = MaceFinetuner(str(tiny_mace_model), 1, FinetuneCfg(method="naive"), mace_run_train=str(fake))
    with pytest.raises(MaceTrainError, match="something mace said") as err:
        ft.fit(data, tmp_path / "fail")
    assert "exit status 3" in str(err.value)
    empty = LabelledSet([bulk("Cu")], [label_with([bulk("Cu")]).labels[0].failed("scf")])
    with pytest.raises(MaceTrainError, match="no usable"):
        ft.fit(empty, tmp_path / "fail2")


def test_parse_error_table():
    log = """INFO: Error-table on TRAIN and VALID:
+---------------+---------------------+------------------+-------------------+---------------------------------------+
|  config_type  | RMSE E / meV / atom | RMSE F / meV / A | relative F RMSE % | RMSE Stress (Virials) / meV / A (A^3) |
+---------------+---------------------+------------------+-------------------+---------------------------------------+
| train_Default |          145.6      |        269.2     |         33.05     |                    35.8               |
| valid_Default |           63.1      |       1382.3     |         48.64     |                    87.6               |
| valid_pt_head |            1.0      |          2.0     |          3.00     |                     4.0               |
+---------------+---------------------+------------------+-------------------+---------------------------------------+
INFO: Done"""
    m = parse_error_table(log)
    assert m == {"train_rmse_e_meV_per_atom": 145.6, "train_rmse_f_meV_per_A": 269.2,
                 "train_rmse_stress_meV_per_A3": 35.8, "valid_rmse_e_meV_per_atom": 63.1,
                 "valid_rmse_f_meV_per_A": 1382.3, "valid_rmse_stress_meV_per_A3": 87.6}


# ----------------------------------------------------------------------------------------
# model names and devices
def test_resolve_model_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="neither an existing file nor a MACE-MP"):
        resolve_model(str(tmp_path / "nope.model"))
    with pytest.raises(ModelLoadError, match="not a MACE model|cannot load"):
        bad = tmp_path / "bad.model"
        bad.write_text("not a model")
        MaceCommittee([str(bad)])


def test_mace_mp_0_means_medium(monkeypatch, tmp_path):
    import mace.calculators.foundations_models as fm

    seen = []
    target = tmp_path / "medium.model"
    target.write_bytes(b"x")
    monkeypatch.setattr(fm, "download_mace_mp_checkpoint", lambda m=None: seen.append(m) or str(target))
    assert resolve_model("MACE-MP-0") == str(target)
    assert seen == ["medium"]


@pytest.mark.timeout(60)
def test_resolve_model_unreachable_download(monkeypatch, tmp_path):
    import mace.calculators.foundations_models as fm

    with socket.socket() as s:  # a local port that nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setitem(fm.mace_mp_urls, "medium", f"http://127.0.0.1:{port}/mace-medium.model")
    with pytest.raises(ModelLoadError) as err:
        resolve_model("MACE-MP-0")
    msg = str(err.value)
    assert "'medium'" in msg and "local .model file" in msg
    assert str(tmp_path / "empty_cache" / "mace") in msg
    assert not list((tmp_path / "empty_cache" / "mace").glob("*.part"))


def test_pick_device():
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert ms.is_mace_foundation_name("MACE-MP-0") and ms.is_mace_foundation_name("medium-mpa-0")


def test_kfold_validates_every_structure_once():
    from pyacemaker_hpc.trainer.finetune_selection import kfold

    folds = kfold(10, 3, seed=4)
    assert len(folds) == 3 and sorted(np.concatenate(folds).tolist()) == list(range(10))
    assert kfold(2, 3, seed=0)[0].size == 1  # never more folds than structures


def test_finetune_loss_chosen_by_cross_validation(tiny_mace_model, tmp_path):
    from pyacemaker_hpc.trainer.finetune_selection import score, select_finetune_loss

    data = label_with(perturbed_bulk("Cu", n=6, seed=31, strain=0.08))
    seen_valid = []

    def fit(overrides, train, valid, wd):
        seen_valid.append({a.info.get("uid", id(a)) for a in valid.structures})
        assert len(train) + len(valid) == 6
        cfg = FinetuneCfg(method="naive", e0s="foundation", batch_size=2, **overrides)
        return MaceFinetuner(str(tiny_mace_model), 2, cfg).fit(train, wd, name="cv", valid=valid)

    cands = [{"energy_weight": 1.0}, {"energy_weight": 1000.0, "lr": 0.001}]
    chosen, table = select_finetune_loss(fit, data, cands, str(tmp_path), folds=2, seed=0)
    assert len(table) == 2 and all(r["folds"] == 2 for r in table) and len(seen_valid) == 4
    assert all(np.isfinite(r["cv_energy_meV_atom"]) and np.isfinite(r["cv_forces_meV_A"]) for r in table)
    best = min(range(2), key=lambda i: table[i]["score"])
    assert chosen == cands[best] and table[best].get("chosen") and not table[1 - best].get("chosen")
    assert min(score(table)) >= 2.0 - 1e-12  # each error divided by the best candidate's


def test_select_by_validation_keys_are_checked():
    with pytest.raises(ValueError, match="energy_weight"):
        FinetuneCfg(select_by_validation=[{"energy_wieght": 10.0}])
    assert FinetuneCfg(select_by_validation=[{"energy_weight": 10.0}, {"lr": 0.001}]).cv_folds == 3
    # the energy reference is part of the loss: E0s are a candidate key too, checked at once
    ok = FinetuneCfg(select_by_validation=[{"e0s": "estimated"}, {"e0s": "foundation", "energy_weight": 10}])
    assert ok.select_by_validation[1] == {"e0s": "foundation", "energy_weight": 10.0}
    with pytest.raises(ValueError, match="mace.finetune.e0s: expected foundation"):
        FinetuneCfg(select_by_validation=[{"e0s": "avg"}])
    with pytest.raises(ValueError, match="multihead"):
        FinetuneCfg(method="multihead", select_by_validation=[{"e0s": "average"}])
    with pytest.raises(ValueError, match="must be a number"):
        FinetuneCfg(select_by_validation=[{"lr": "fast"}])
    with pytest.raises(ValueError, match="mace.finetune.e0s"):  # the key itself, before any step
        FinetuneCfg(e0s="avrage")
    # the method is a candidate key: replay is then needed even where the config says naive
    both = FinetuneCfg(method="naive", select_by_validation=[{"method": "naive"}, {"method": "multihead"}])
    assert both.uses_multihead() and not FinetuneCfg(method="naive").uses_multihead()
    with pytest.raises(ValueError, match="naive or multihead"):
        FinetuneCfg(select_by_validation=[{"method": "replay"}])
    with pytest.raises(ValueError, match="multihead"):  # average E0s refused for that candidate
        FinetuneCfg(method="naive", select_by_validation=[{"method": "multihead", "e0s": "average"}])
    assert FinetuneCfg(method="multihead", select_by_validation=[{"method": "naive", "e0s": "average"}])


def test_finetune_method_chosen_by_cross_validation(tiny_mace_model, tmp_path):
    """naive against multihead on the user's labels: each candidate runs its own method
    (multihead with the replay set), and the table says which one each row was."""
    from pyacemaker_hpc.trainer.finetune_selection import select_finetune_loss

    data = label_with(perturbed_bulk("Cu", n=4, seed=41, strain=0.06))
    replay = foundation_replay_set(str(tiny_mace_model), perturbed_bulk("Cu", n=3, seed=42))
    base = FinetuneCfg(method="naive", e0s="estimated", batch_size=2,
                       select_by_validation=[{"method": "naive"}, {"method": "multihead"}])
    used = []

    def fit(overrides, train, valid, wd):
        model = MaceFinetuner(str(tiny_mace_model), 1, base.model_copy(update=overrides),
                              replay=replay).fit(train, wd, name="cv", valid=valid)
        used.append((overrides["method"], model.metrics["multihead"], model.metrics["n_replay"]))
        return model

    chosen, table = select_finetune_loss(fit, data, base.select_by_validation, str(tmp_path), folds=2)
    assert sorted(set(used)) == [("multihead", 1.0, 3.0), ("naive", 0.0, 0.0)] and len(used) == 4
    assert chosen in base.select_by_validation and [r["overrides"]["method"] for r in table] == ["naive", "multihead"]


def test_teacher_pressure_shift_removes_a_pressure_offset_and_keeps_forces_and_stress_consistent():
    """``mace.teacher_pressure_shift``: a 'DFT' that differs from the teacher (EMT) by one
    pressure and a per-element constant is recovered from the picks' stresses and energies;
    the moved teacher equals it on every cell, forces untouched, and its stress still is the
    volume derivative of its energy (dE'/dV = -P'). Failed DFT and stress-less labels are
    ignored; with the pressure term alone no energy constant is fitted."""
    from ase.calculators.emt import EMT

    from pyacemaker_hpc.core.models import Label
    from ase.units import GPa

    from pyacemaker_hpc.steps.s5_label import apply_correction, fit_teacher_correction

    def emt_label(a):
        a = a.copy()
        a.calc = EMT()
        return Label(energy=a.get_potential_energy(), forces=a.get_forces(), stress=a.get_stress())

    cells = []
    for k, scale in enumerate([0.96, 0.99, 1.01, 1.04]):
        a = bulk("Cu", "fcc", a=3.6 * scale, cubic=True)
        a.rattle(0.05, seed=k)
        cells.append(a)
    teacher = [emt_label(a) for a in cells]
    dp, mu = 3.0 * GPa, 0.04  # DFT is 3 GPa above the teacher, 40 meV/atom higher
    voigt = np.array([1, 1, 1, 0, 0, 0], float)
    dft = [Label(energy=t.energy + mu * len(a) - dp * a.get_volume(), forces=t.forces,
                 stress=t.stress - dp * voigt) for a, t in zip(cells, teacher)]
    no_stress = Label(energy=dft[1].energy, forces=dft[1].forces)  # a calculator without stress
    dft_set = LabelledSet(cells + cells[:2], dft + [Label.failed("scf"), no_stress])
    both = fit_teacher_correction(dft_set, teacher + teacher[:2], ["Cu"], energy=True, pressure=True)
    assert both["n_stress"] == 4 and both["pressure_GPa"] == pytest.approx(3.0)
    v_ref = np.mean([a.get_volume() / len(a) for a in cells])
    assert both["reference_volume_A3_per_atom"] == pytest.approx(v_ref)
    assert both["shift_eV_per_atom"]["Cu"] == pytest.approx(mu - dp * v_ref, abs=1e-6)
    moved = apply_correction(cells, teacher, both)
    assert [m.energy for m in moved] == pytest.approx([d.energy for d in dft], abs=1e-6)
    assert all(np.array_equal(m.forces, t.forces) for m, t in zip(moved, teacher))

    only_p = fit_teacher_correction(dft_set, teacher + teacher[:2], ["Cu"], energy=False, pressure=True)
    assert only_p["shift_eV_per_atom"] == {"Cu": 0.0}
    diff = [(d.energy - m.energy) / len(a) for a, d, m in zip(cells, dft, apply_correction(cells, teacher, only_p))]
    assert np.ptp(diff) < 1e-6  # the volume dependence is gone, the constant is left ...
    assert np.mean(diff) == pytest.approx(mu - dp * v_ref, abs=1e-6)  # ... where it was at v_ref

    # the gate: an offset the picks do not resolve moves nothing and leaves step 5's hash alone
    from pyacemaker_hpc.steps.s5_label import is_null
    exact = fit_teacher_correction(dft_set, teacher + teacher[:2], ["Cu"], energy=False, pressure=True, min_sigma=5)
    assert exact["applied"] and exact["pressure_eV_per_A3"] == pytest.approx(dp)  # noiseless: resolved
    noisy = [Label(energy=d.energy, forces=d.forces, stress=d.stress + (-1) ** k * 2 * dp * voigt)
             for k, d in enumerate(dft)]  # +-6 GPa scatter around the 3 GPa offset
    gated = fit_teacher_correction(LabelledSet(cells, noisy), teacher, ["Cu"], energy=False, pressure=True,
                                   min_sigma=5)
    assert not gated["applied"] and gated["z"] < 5 and gated["pressure_GPa"] == pytest.approx(3.0)
    assert gated["pressure_eV_per_A3"] == 0.0 and is_null(gated) and not is_null(exact)
    assert fit_teacher_correction(LabelledSet(cells, noisy), teacher, ["Cu"], energy=False, pressure=True,
                                  min_sigma=0)["applied"]

    # the moved teacher is still conservative: its energy's volume derivative is its pressure
    a0, h = bulk("Cu", "fcc", a=3.62, cubic=True), 0.0005
    strained = [a0.copy() for _ in range(3)]
    for a, s in zip(strained, (1 - h, 1.0, 1 + h)):
        a.set_cell(a0.cell * s, scale_atoms=True)
    m = apply_correction(strained, [emt_label(a) for a in strained], only_p)
    dedv = (m[2].energy - m[0].energy) / (strained[2].get_volume() - strained[0].get_volume())
    assert dedv == pytest.approx(np.sum(m[1].stress[:3]) / 3, rel=5e-3)  # = -P' (dp is 15x this)


def test_pressure_from_the_energies_ignores_a_pulay_stress_and_separates_composition_from_volume():
    """``mace.teacher_pressure_source: energy``: on a binary whose 'DFT' differs from the
    teacher (EMT) by one pressure, one level per element and a stress offset the energies
    do not show (a Pulay stress), the energies' slope gives the pressure, the stresses do
    not; Au-rich cells being larger does not leak the levels into the slope; scattered
    energies close the gate; too few picks never open it."""
    from ase.calculators.emt import EMT
    from ase.units import GPa

    from pyacemaker_hpc.core.models import Label
    from pyacemaker_hpc.steps.s5_label import apply_correction, fit_teacher_correction

    cells = []
    for k in range(8):
        n_au = k % 4
        a = bulk("Cu", "fcc", a=(3.6 + 0.15 * n_au) * (0.97 + 0.02 * (k // 4) + 0.005 * k), cubic=True)
        for i in range(n_au):
            a[i].symbol = "Au"
        a.rattle(0.03, seed=k)
        a.calc = EMT()
        cells.append(a)
    teacher = [Label(energy=a.get_potential_energy(), forces=a.get_forces(), stress=a.get_stress()) for a in cells]
    dp, level, pulay = -2.0 * GPa, {"Cu": 0.05, "Au": -0.12}, 3.0 * GPa
    voigt = np.array([1, 1, 1, 0, 0, 0], float)

    def dft_label(a, t, noise=0.0):
        e = t.energy - dp * a.get_volume() + sum(level[s] for s in a.get_chemical_symbols()) + noise * len(a)
        return Label(energy=e, forces=t.forces, stress=t.stress - (dp + pulay) * voigt)

    dft = LabelledSet(cells, [dft_label(a, t) for a, t in zip(cells, teacher)])
    by_energy = fit_teacher_correction(dft, teacher, ["Cu", "Au"], energy=False, pressure=True, min_sigma=5,
                                       source="energy")
    assert by_energy["applied"] and by_energy["pressure_GPa"] == pytest.approx(-2.0, abs=1e-6)
    assert by_energy["energy_rms_after_meV_atom"] < 1e-3 < by_energy["energy_rms_before_meV_atom"]
    by_stress = fit_teacher_correction(dft, teacher, ["Cu", "Au"], energy=False, pressure=True, source="stress")
    assert by_stress["pressure_GPa"] == pytest.approx(1.0)  # the Pulay stress on top
    moved = apply_correction(cells, teacher, by_energy)
    rest = [(d.energy - m.energy - sum(level[s] for s in a.get_chemical_symbols())) / len(a)
            for a, d, m in zip(cells, dft.labels, moved)]
    assert np.ptp(rest) < 1e-6  # only a constant is left: the slope is gone from every cell

    scatter = [0.08 * (-1) ** k for k in range(len(cells))]  # +-80 meV/atom: the slope drowns
    noisy = LabelledSet(cells, [dft_label(a, t, e) for a, t, e in zip(cells, teacher, scatter)])
    gated = fit_teacher_correction(noisy, teacher, ["Cu", "Au"], energy=False, pressure=True, min_sigma=5,
                                   source="energy")
    assert not gated["applied"] and gated["z"] < 5 and gated["pressure_eV_per_A3"] == 0.0
    few = LabelledSet(cells[:4], dft.labels[:4])  # 4 picks for 3 terms: no error estimate
    assert not fit_teacher_correction(few, teacher[:4], ["Cu", "Au"], energy=False, pressure=True,
                                      source="energy")["applied"]


def test_teacher_energy_shift_is_per_element_and_reaches_only_the_ace_fits(tmp_path):
    """Step 5's shift of the teacher onto the DFT picks: one least-squares constant per
    element (a binary's compositions separate them), failed DFT ignored; steps 6-7 read
    shifted labels through ``teacher_labels`` while the stored labels stay the teacher's."""
    from types import SimpleNamespace

    from pyacemaker_hpc.campaign import Campaign
    from pyacemaker_hpc.core.models import Label
    from pyacemaker_hpc.steps.s5_label import energy_shift, teacher_labels

    cells = []
    for n_au in range(4):  # Cu4, Cu3Au, Cu2Au2, CuAu3
        a = bulk("Cu", "fcc", a=3.6 + 0.1 * n_au, cubic=True)
        for i in range(n_au):
            a[i].symbol = "Au"
        cells.append(a)
    teacher = [Label(energy=-3.0 * len(a) + 0.01 * i, forces=np.zeros((len(a), 3))) for i, a in enumerate(cells)]
    true = {"Cu": 0.05, "Au": -0.12}
    dft = [Label(energy=t.energy + sum(true[s] for s in a.get_chemical_symbols()), forces=t.forces)
           for a, t in zip(cells, teacher)]
    dft_set = LabelledSet(cells + [cells[0]], dft + [Label.failed("scf did not converge")])
    shift = energy_shift(dft_set, teacher + [teacher[0]], ["Cu", "Au"])
    assert shift["n_dft"] == 4
    assert shift["shift_eV_per_atom"] == pytest.approx(true, abs=1e-9)
    assert shift["rms_after_meV_atom"] < 1e-6 < shift["rms_before_meV_atom"]

    with Campaign(tmp_path / "c.h5") as camp:
        camp.write_structures("surrogate", cells)
        camp.init_labels("surrogate", "mace")
        camp.put_labels("surrogate", "mace", dict(enumerate(teacher)))
        camp.write_json("metrics/teacher_energy_shift", shift)
        ctx = lambda on: SimpleNamespace(camp=camp, cfg=SimpleNamespace(mace=SimpleNamespace(shift_teacher_to_dft=on, teacher_pressure_shift=False)))  # noqa: E731
        assert [lab.energy for lab in teacher_labels(ctx(True)).labels] == pytest.approx([d.energy for d in dft])
        assert [lab.energy for lab in teacher_labels(ctx(False)).labels] == [t.energy for t in teacher]
        assert [lab.energy for lab in camp.read_labels("surrogate", "mace")] == [t.energy for t in teacher]
