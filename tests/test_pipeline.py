"""The whole pipeline on tiny settings: serial, under mpirun -n 2, resumed after a kill,
and re-run after a config change. Real MACE, real pacemaker, EMT as the 'DFT'."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from pipeline_config import dft_calls, run_cli, start_until_dft_calls, step_attrs, tiny_config

ALL_STEPS = ["step1_sampling", "step2_active_learning", "step3_finetune", "step4_surrogate_sampling",
             "step5_surrogate_labelling", "step6_base_ace", "step7_delta_learning", "evaluate"]


def _run(config: Path, nranks: int = 0, timeout: float = 900) -> subprocess.CompletedProcess:
    return run_cli(config, nranks=nranks, timeout=timeout)


_steps = step_attrs


def _model_sha(h5: Path, name: str) -> dict:
    with h5py.File(h5, "r") as f:
        return {k: ds.attrs["sha256"] for k, ds in f["models"][name].items()}


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory, tiny_mace_model, tiny_mace_committee):
    tmp = tmp_path_factory.mktemp("serial")
    # three structures the user already has DFT labels for (EMT here)
    from pyacemaker_hpc.tools.toy_data import label_with, perturbed_bulk, write_mace_extxyz

    write_mace_extxyz(label_with(perturbed_bulk("Cu", n=3, seed=99, a=3.6)), str(tmp / "mine.xyz"), prefix="DFT_")
    existing = [{"path": str(tmp / "mine.xyz"), "energy_key": "DFT_energy", "forces_key": "DFT_forces",
                 "stress_key": "DFT_stress"}]
    # step 3 asks the labels whether the foundation's replay helps (2 folds x naive, multihead)
    cands = [{"method": "naive"}, {"method": "multihead"}]
    cfg = tiny_config(tmp, str(tiny_mace_model), [str(p) for p in tiny_mace_committee],
                      **{"dft.existing_data": existing, "mace.finetune.select_by_validation": cands,
                         "mace.finetune.cv_folds": 2, "mace.finetune.replay_size": 6})
    t0 = time.time()
    res = _run(cfg)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return tmp, cfg, res, time.time() - t0


def test_full_pipeline_serial(serial_run):
    tmp, cfg, res, _ = serial_run
    steps = _steps(tmp / "campaign.h5")
    assert [s for s in ALL_STEPS if steps[s]["status"] == "done"] == ALL_STEPS
    with h5py.File(tmp / "campaign.h5", "r") as f:
        n_sel = f["structures/selected"].attrs["n"]
        n_dft = f["structures/dft"].attrs["n"]
        assert n_sel == 12 and n_dft == 6 + 3  # threshold 0.5: the most uncertain half + existing
        prov = f["structures/dft/provenance"][()].astype(str)
        assert sum(p.startswith("existing:") for p in prov) == 3
        assert f["structures/surrogate"].attrs["n"] == 30
        st = f["labels/surrogate/mace/status"][()].astype(str)
        assert (st == "done").all()
        for m in ("mace_ft_0", "ace_base", "ace_final", "ace_dft_only"):
            assert m in f["models"], m
        ev = json.loads(f["metrics/evaluation"][()])
        sel = json.loads(f["metrics/finetune_selection"][()])
        assert f["structures/replay"].attrs["n"] == 6  # the config says naive; a candidate replays
        teacher = json.loads(f["models/mace_ft_0"].attrs["metrics"])
    assert [r["overrides"] for r in sel["table"]] == sel["candidates"] and sel["chosen"] in sel["candidates"]
    assert teacher["multihead"] == float(sel["chosen"]["method"] == "multihead")  # the teacher runs the choice
    assert set(ev["models"]) == {"foundation MACE", "fine-tuned MACE", "base ACE (step 6)", "final ACE",
                                 "ACE on DFT labels only"}
    assert all(m["n"] == 5 for m in ev["models"].values())
    drift = ev["drift_from_foundation"]  # fine-tuning moved the teacher, by a finite amount
    assert drift["n"] == 6 and drift["method"] == sel["chosen"]["method"]
    assert 0 < drift["force_rmse_meV_A"] < 1e4 and np.isfinite(drift["energy_rmse_shifted_meV_atom"])
    ext = ev["extrapolation"]  # the final ACE's gamma on every held-out cell, from its .asi
    assert ext["n"] == 5 and ext["max_gamma"] > 0 and ext["threshold"] == 5.0
    assert ext["n_beyond"] + (ext["force_rmse_within_meV_A"] is not None) >= 1
    assert "final ACE extrapolation grade on the held-out cells" in res.stdout
    out = tmp / "results"
    for name in ("potential.yaml", "potential.yace", "potential.asi", "mace_finetuned.model",
                 "dft_dft.xyz", "surrogate_mace.xyz", "holdout_dft.xyz", "in.lammps", "metrics.json"):
        assert (out / name).is_file(), name
    assert "final ACE" in res.stdout  # the comparison table is printed
    # every DFT call was for a distinct structure: 6 training + 5 held-out (existing: none)
    calls = dft_calls(tmp)
    assert len(calls) == 11 and len(set(calls)) == 11


def test_rerun_is_a_no_op(serial_run):
    tmp, cfg, _, first = serial_run
    before = _steps(tmp / "campaign.h5")
    n_calls = len(dft_calls(tmp))
    t0 = time.time()
    res = _run(cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    after = _steps(tmp / "campaign.h5")
    assert all(after[s]["finished"] == before[s]["finished"] for s in ALL_STEPS)  # nothing recomputed
    assert len(dft_calls(tmp)) == n_calls
    assert time.time() - t0 < 60 and time.time() - t0 < first


def test_changing_step7_reruns_only_step7(serial_run, tmp_path):
    tmp, cfg, _, _ = serial_run
    data = yaml.safe_load(cfg.read_text())
    data["distillation"]["step7_pacemaker_finetune"]["weight_dft"] = 3.0
    data["pacemaker"].update({"select_weight_dft": [3.0, 30.0], "cv_folds": 2})  # chosen by CV
    cfg.write_text(yaml.safe_dump(data))
    before = _steps(tmp / "campaign.h5")
    n_calls = len(dft_calls(tmp))
    baseline_before = _model_sha(tmp / "campaign.h5", "ace_dft_only")
    res = _run(cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    after = _steps(tmp / "campaign.h5")
    rerun = [s for s in ALL_STEPS if after[s]["finished"] != before[s]["finished"]]
    assert rerun == ["step7_delta_learning", "evaluate"]
    assert len(dft_calls(tmp)) == n_calls
    # the DFT-only baseline does not depend on step 7: evaluated again, not refitted
    assert "inputs unchanged, the stored fit is reused" in res.stdout + res.stderr
    assert _model_sha(tmp / "campaign.h5", "ace_dft_only") == baseline_before
    with h5py.File(tmp / "campaign.h5", "r") as f:
        sel = json.loads(f["metrics/weight_dft_selection"][()])
        final = json.loads(f["models/ace_final"].attrs["metrics"])
    assert [r["overrides"]["weight_dft"] for r in sel["table"]] == [3.0, 30.0]
    assert final["weight_dft"] == sel["chosen"]



def test_changing_the_energy_reference_refits_from_step6(serial_run):
    """``pacemaker.reference_energy`` decides the E0 written into every ACE fit: changing it
    re-runs step 6 onwards with the new E0 (the cached /metrics/e0 must not survive it)."""
    tmp, cfg, _, _ = serial_run
    data = yaml.safe_load(cfg.read_text())
    with h5py.File(tmp / "campaign.h5", "r") as f:
        e0_auto = json.loads(f["metrics/e0"][()])
    assert all(v != 0.0 for v in e0_auto.values())  # fitted on the (EMT) labels
    data["pacemaker"].update({"reference_energy": "zero", "select_weight_dft": []})
    cfg.write_text(yaml.safe_dump(data))
    before = _steps(tmp / "campaign.h5")
    res = _run(cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    after = _steps(tmp / "campaign.h5")
    assert [s for s in ALL_STEPS if after[s]["finished"] != before[s]["finished"]] == [
        "step6_base_ace", "step7_delta_learning", "evaluate"]
    with h5py.File(tmp / "campaign.h5", "r") as f:
        assert json.loads(f["metrics/e0"][()]) == {el: 0.0 for el in e0_auto}
        base = json.loads(f["models/ace_base"].attrs["metrics"])
        baseline = json.loads(f["models/ace_dft_only"].attrs["metrics"])
    assert all(base[f"e0_{el}"] == 0.0 for el in e0_auto), base
    assert all(baseline[f"e0_{el}"] == 0.0 for el in e0_auto), baseline  # refitted on the new E0

@pytest.mark.mpirun
def test_pipeline_under_mpirun_with_kill_during_dft(tmp_path, tiny_mace_model, tiny_mace_committee):
    """mpirun -n 2; SIGKILL the job while step 2 runs DFT; re-run: no finished DFT call is
    repeated (at most the one in flight), the campaign completes. Fine-tuning is multihead
    here: its offline replay set (the foundation's labels on pool cells) is made in step 3;
    step 5 moves the teacher's labels onto the DFT picks (the default pressure term, then
    ``mace.shift_teacher_to_dft``'s energy shift)."""
    cfg = tiny_config(tmp_path, str(tiny_mace_model), [str(p) for p in tiny_mace_committee], sleep=0.7,
                      **{"mace.finetune.method": "multihead", "mace.finetune.replay_size": 8,
                         "mace.shift_teacher_to_dft": True,
                         "evaluation.compare_dft_only": False})  # the serial tests cover the baseline
    proc = start_until_dft_calls(cfg, tmp_path, 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before_kill = dft_calls(tmp_path)
    assert 3 <= len(before_kill) < 6
    with h5py.File(tmp_path / "campaign.h5", "r") as f:  # the file opens after SIGKILL
        assert f["steps/step2_active_learning"].attrs["status"] == "running"
    res = _run(cfg, nranks=2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    calls = dft_calls(tmp_path)
    repeated = [k for k, n in Counter(calls).items() if n > 1]
    assert len(repeated) <= 1, repeated  # only the calculation in flight may be repeated
    assert len(set(calls)) == 11
    steps = _steps(tmp_path / "campaign.h5")
    assert all(steps[s]["status"] == "done" for s in ALL_STEPS)
    with h5py.File(tmp_path / "campaign.h5", "r") as f:
        assert f["structures/replay"].attrs["n"] == 8
        assert (f["labels/replay/foundation/status"][()].astype(str) == "done").all()
        ev = json.loads(f["metrics/evaluation"][()])
        assert json.loads(f["models/mace_ft_0"].attrs["metrics"])["multihead"] == 1.0
        shift = json.loads(f["metrics/teacher_energy_shift"][()])  # step 5 on the DFT picks
        assert shift["n_dft"] == f["structures/dft"].attrs["n"]
        assert shift["rms_after_meV_atom"] <= shift["rms_before_meV_atom"]
        assert shift["n_stress"] == shift["n_dft"]  # the pressure term (on by default) came first
        assert shift["pressure_rms_after_GPa"] <= shift["pressure_rms_before_GPa"]
    assert ev["drift_from_foundation"]["method"] == "multihead"
