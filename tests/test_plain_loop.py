"""The plain DFT active-learning loop (``enable_mace_distillation: false``) end to end, and
``pyacemaker-hpc export`` on its campaign: real pacemaker and pace_activeset, EMT as the
'DFT' (counting every call), ACE descriptors (no MACE model needed).

A clean run; a run SIGKILLed during iteration 1 and resumed; a no-op re-run; the exported
potential, datasets and LAMMPS input checked against what the campaign recorded."""
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
import pandas as pd
import pytest
from ase.io import read

from pipeline_config import BIN, cli_env, dft_calls, run_cli, step_attrs, tiny_config
from pyacemaker_hpc.campaign import Campaign
from pyacemaker_hpc.core.models import Label, LabelledSet, TrainedModel

AL = {"initial_dft": 4, "batch_size": 2, "dft_budget": 8, "max_iterations": 4, "gamma_threshold": 1.0,
      "n_candidates_per_iteration": 20}
N_HOLDOUT = 5
STEPS = ["step1_sampling", "plain_dft_loop", "evaluate"]


def _config(tmp: Path, sleep: float = 0.0) -> Path:
    # base_model is not used (no MACE anywhere): any existing path passes validation
    return tiny_config(tmp, __file__, [], sleep=sleep, distill=False,
                       **{"descriptors.kind": "ace", "active_learning": AL,
                          "evaluation.n_holdout": N_HOLDOUT})


def _cli(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=timeout)


_steps = step_attrs


def _loop(tmp: Path) -> tuple[list[dict], list[list[str]]]:
    """The recorded history and the uids of /structures/al_iter<k>, checked for consistency."""
    with h5py.File(tmp / "campaign.h5", "r") as f:
        hist = json.loads(f["metrics/plain_dft_loop"][()])
        sets = sorted((k for k in f["structures"] if k.startswith("al_iter")), key=lambda s: int(s[7:]))
        uids = [list(f[f"structures/{s}/uid"][()].astype(str)) for s in sets]
        models = set(f["models"])
        same_final = f["models/ace_final/.yace"][()].tobytes() == \
            f[f"models/ace_iter{len(hist) - 1}/.yace"][()].tobytes()
    K = len(hist)
    assert [h["iteration"] for h in hist] == list(range(K))  # each iteration recorded once
    assert [h["stop"] for h in hist] == [False] * (K - 1) + [True]
    assert sets == [f"al_iter{k}" for k in range(K)]
    assert {f"ace_iter{k}" for k in range(K)} | {"ace_final"} <= models and f"ace_iter{K}" not in models
    assert same_final
    sizes = [len(u) for u in uids]
    assert sizes[0] == AL["initial_dft"]
    assert [h["n_dft_calls"] for h in hist] == list(np.cumsum(sizes))
    assert hist[-1]["n_dft_calls"] <= AL["dft_budget"]
    all_uids = [u for s in uids for u in s]
    assert len(set(all_uids)) == len(all_uids)  # no structure sent to DFT twice
    for k, h in enumerate(hist[:-1]):  # continued: candidates above threshold and budget left
        assert h["max_gamma"] > AL["gamma_threshold"] and h["n_above_threshold"] > 0
        assert sizes[k + 1] == min(AL["batch_size"], h["n_above_threshold"], AL["dft_budget"] - h["n_dft_calls"])
    last = hist[-1]
    assert (last["n_above_threshold"] == 0 or last["n_dft_calls"] >= AL["dft_budget"]
            or K == AL["max_iterations"]), last
    assert last["stop_reason"]
    return hist, uids


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plain")
    cfg = _config(tmp)
    t0 = time.time()
    res = _cli(cfg)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return tmp, cfg, res, time.time() - t0


def test_plain_loop_runs_to_a_stop(clean_run):
    tmp, _, res, _ = clean_run
    steps = _steps(tmp / "campaign.h5")
    assert {s: steps[s]["status"] for s in STEPS} == {s: "done" for s in STEPS}
    hist, uids = _loop(tmp)
    assert len(hist) >= 2  # tiny data: iteration 0 always finds extrapolative candidates
    with h5py.File(tmp / "campaign.h5", "r") as f:
        dft_uids = set(f["structures/dft/uid"][()].astype(str))  # the training set = all AL sets
        ev = json.loads(f["metrics/evaluation"][()])
    assert dft_uids == {u for s in uids for u in s}
    assert ev["n_dft_training"] == hist[-1]["n_dft_calls"]
    assert list(ev["models"]) == ["final ACE"] and ev["models"]["final ACE"]["n"] == N_HOLDOUT
    assert "final ACE" in res.stdout and "Held-out DFT set" in res.stdout  # the table is printed
    calls = dft_calls(tmp)  # every real DFT call: the AL sets + the held-out set, all distinct
    assert len(calls) == len(set(calls)) == hist[-1]["n_dft_calls"] + N_HOLDOUT


def test_only_extrapolative_structures_go_to_dft(clean_run):
    """Every structure of al_iter<k+1> has gamma > threshold under ace_iter<k>."""
    from pyacemaker_hpc.trainer.active_set import extrapolation_grades

    tmp = clean_run[0]
    camp = Campaign(tmp / "campaign.h5", readonly=True)
    hist = camp.read_json("metrics/plain_dft_loop")
    for k in range(len(hist) - 1):
        new = camp.read_structures(f"al_iter{k + 1}")
        gamma = extrapolation_grades(camp.load_model(f"ace_iter{k}"), new, str(tmp / "gcheck" / str(k)))
        assert np.all(gamma > AL["gamma_threshold"]), (k, gamma)
        assert np.isclose(gamma.max(), hist[k]["max_gamma"])  # the most extrapolative went first


def test_rerun_is_a_no_op(clean_run):
    tmp, cfg, _, first = clean_run
    before, n_calls = _steps(tmp / "campaign.h5"), len(dft_calls(tmp))
    t0 = time.time()
    res = _cli(cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    after = _steps(tmp / "campaign.h5")
    assert all(after[s]["finished"] == before[s]["finished"] for s in STEPS)
    assert len(dft_calls(tmp)) == n_calls
    assert time.time() - t0 < first


def test_kill_during_iteration_1_then_resume(tmp_path, clean_run):
    """SIGKILL while iteration 1 runs its DFT; the re-run completes, repeats at most the
    calculation in flight, and records every iteration once."""
    cfg = _config(tmp_path, sleep=0.3)
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([str(BIN / "pyacemaker-hpc"), str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            env=cli_env(), start_new_session=True)
    deadline = time.time() + 300
    while len(dft_calls(tmp_path)) <= AL["initial_dft"]:  # one call of iteration 1 finished
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    with h5py.File(tmp_path / "campaign.h5", "r") as f:  # the file opens after SIGKILL
        assert f["steps/plain_dft_loop"].attrs["status"] == "running"
        assert "ace_iter0" in f["models"] and "ace_iter1" not in f["models"]
        assert len(json.loads(f["metrics/plain_dft_loop"][()])) == 1
    res = _cli(cfg)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert "[plain_dft_loop] resuming" in res.stderr
    hist, uids = _loop(tmp_path)
    calls = dft_calls(tmp_path)
    repeated = [c for c, n in Counter(calls).items() if n > 1]
    assert len(repeated) <= 1, repeated  # only the calculation in flight may run twice
    assert len(set(calls)) == hist[-1]["n_dft_calls"] + N_HOLDOUT
    assert all(s["status"] == "done" for s in _steps(tmp_path / "campaign.h5").values())
    # the killed-and-resumed campaign made the same choices as the uninterrupted one
    assert uids == _loop(clean_run[0])[1]


# ---------------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def exported(clean_run):
    tmp = clean_run[0]
    out = tmp / "export"
    res = _cli("export", tmp / "campaign.h5", "-o", out)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp, out, res


def test_export_writes_potential_datasets_and_lammps_input(exported):
    tmp, out, res = exported
    for name in ("potential.yaml", "potential.yace", "potential.asi", "dft_dft.xyz", "dft_dft.pckl.gzip",
                 "holdout_dft.xyz", "holdout_dft.pckl.gzip", "in.lammps", "metrics.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert f"{name}: " in res.stdout, name
    with h5py.File(tmp / "campaign.h5", "r") as f:
        for suffix in (".yaml", ".yace", ".asi"):
            assert (out / f"potential{suffix}").read_bytes() == f[f"models/ace_final/{suffix}"][()].tobytes()
    lmp = (out / "in.lammps").read_text()
    assert "pair_coeff      * * potential.yaml potential.asi Cu" in lmp  # pace/extrapolation: B-basis
    assert "potential.yace Cu" in lmp
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["plain_dft_loop"] == Campaign(tmp / "campaign.h5", readonly=True).read_json("metrics/plain_dft_loop")


def test_exported_datasets_match_the_campaign(exported):
    tmp, out, _ = exported
    camp = Campaign(tmp / "campaign.h5", readonly=True)
    e0 = camp.read_json("metrics/e0")
    for name in ("dft", "holdout"):
        ls = camp.labelled_set(name, "dft")
        frames = read(out / f"{name}_dft.xyz", index=":")
        assert len(frames) == len(ls) > 0
        assert np.allclose([a.get_potential_energy() for a in frames], [lab.energy for lab in ls.labels])
        assert np.allclose(np.concatenate([a.get_forces() for a in frames]),
                           np.concatenate([lab.forces for lab in ls.labels]))
        df = pd.read_pickle(out / f"{name}_dft.pckl.gzip", compression="gzip")
        assert {"ase_atoms", "energy", "energy_corrected", "forces"} <= set(df.columns) and len(df) == len(ls)
        assert np.allclose(df["energy"], [lab.energy for lab in ls.labels])
        assert np.allclose(df["energy_corrected"], df["energy"] - df["ase_atoms"].map(len) * e0["Cu"])


def test_exported_potential_gives_the_recorded_energies(exported):
    from pyace import PyACECalculator

    tmp, out, _ = exported
    camp = Campaign(tmp / "campaign.h5", readonly=True)
    structures = camp.read_structures("holdout")
    recorded = camp.read_labels("holdout", "ace_final")
    e0 = camp.read_json("metrics/e0")["Cu"]
    yace, grades = PyACECalculator(str(out / "potential.yace")), PyACECalculator(str(out / "potential.yaml"))
    grades.set_active_set(str(out / "potential.asi"))
    for at, lab in zip(structures, recorded):
        a = at.copy()
        a.calc = yace
        assert abs(a.get_potential_energy() - lab.energy) / len(a) < 1e-6
        assert np.allclose(a.get_forces(), lab.forces, atol=1e-6)
        a.calc = grades  # the B-basis .yaml: same potential, energies without E0, plus gamma
        assert abs(a.get_potential_energy() + len(a) * e0 - lab.energy) / len(a) < 1e-6
        assert np.all(grades.results["gamma"] >= 0)


def test_export_writes_every_file_of_a_residual_pair(tmp_path):
    """A residual delta shipped as two potentials: every suffix is exported, the usage note
    names the exported files, in.lammps sums both; a campaign without /metrics/e0 exports."""
    from ase.build import bulk

    from pyacemaker_hpc.export import export_results

    camp = Campaign(tmp_path / "c.h5", config_yaml="system: {elements: [Cu]}\n")
    atoms = [bulk("Cu", cubic=True), bulk("Cu", cubic=True) * (1, 1, 2)]
    ls = LabelledSet(atoms, [Label(energy=-1.0 * len(a), forces=np.zeros((len(a), 3))) for a in atoms])
    camp.write_structures("dft", ls.structures)
    camp.init_labels("dft", "dft")
    camp.put_labels("dft", "dft", dict(enumerate(ls.labels)))
    name = "ace_base-residual"
    files = {".yaml": b"base yaml", ".yace": b"base yace", ".asi": b"asi", ".base.yaml": b"b",
             ".correction.yaml": b"c", ".correction.yace": b"corr yace",
             ".usage.txt": f"{name}: base + correction\npair_coeff * * pace 2 {name}.correction.yace Cu\n".encode()}
    camp.store_model(TrainedModel("ace_final", "ace", files, {"single_file": 0.0, "e0_Cu": 0.5}))
    written = export_results(camp, tmp_path / "out")
    camp.close()
    out = tmp_path / "out"
    for suffix, data in files.items():
        assert (out / f"potential{suffix}").is_file() and f"potential{suffix}" in written
        if suffix != ".usage.txt":
            assert (out / f"potential{suffix}").read_bytes() == data
    usage = (out / "potential.usage.txt").read_text()
    assert usage.startswith("potential:") and "potential.correction.yace" in usage and name not in usage
    lmp = (out / "in.lammps").read_text()
    assert "hybrid/overlay pace pace" in lmp and "potential.correction.yace Cu" in lmp
    df = pd.read_pickle(out / "dft_dft.pckl.gzip", compression="gzip")  # E0 = 0 without /metrics/e0
    assert np.allclose(df["energy_corrected"], df["energy"])


def test_changed_threshold_restarts_the_loop_without_new_dft(clean_run, tmp_path):
    """On a copy of the finished campaign: a gamma_threshold no candidate reaches re-runs the
    loop from iteration 0 (cached DFT, no new call), stops there, and forgets the later sets."""
    import shutil

    import yaml

    tmp, cfg, _, _ = clean_run
    shutil.copy(tmp / "campaign.h5", tmp_path / "campaign.h5")
    data = yaml.safe_load(cfg.read_text())  # same DFT settings (log file included): same cache
    data["campaign"] = {"path": str(tmp_path / "campaign.h5"), "workdir": str(tmp_path / "work"),
                        "output_dir": str(tmp_path / "results")}
    data["active_learning"]["gamma_threshold"] = 1e6
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    n_calls = len(dft_calls(tmp))
    res = _cli(tmp_path / "config.yaml")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert len(dft_calls(tmp)) == n_calls
    assert "[step1_sampling] done earlier with the same inputs: skipped" in res.stderr
    with h5py.File(tmp_path / "campaign.h5", "r") as f:
        hist = json.loads(f["metrics/plain_dft_loop"][()])
        assert [k for k in f["structures"] if k.startswith("al_iter")] == ["al_iter0"]
        assert sorted(k for k in f["models"] if k.startswith("ace_iter")) == ["ace_iter0"]
        assert json.loads(f["metrics/evaluation"][()])["n_dft_training"] == AL["initial_dft"]
    assert len(hist) == 1 and hist[0]["n_above_threshold"] == 0 and hist[0]["stop"]
    assert hist[0]["stop_reason"] == "no candidate above gamma_threshold"


def test_without_active_set_the_loop_picks_by_descriptor_distance():
    """Too few atoms for pace_activeset (fewer environments than basis functions): the next
    DFT batch is the candidates farthest from the training set in descriptor space."""
    from ase.build import bulk

    from pyacemaker_hpc.steps.plain_loop import distance_to_training

    pool = []
    for k in range(6):
        a = bulk("Cu", "fcc", a=3.6)
        a.info["uid"] = f"u{k}"
        pool.append(a)
    X = np.array([[0.0, 0.0], [0.1, 0.0], [1.0, 1.0], [5.0, 5.0], [0.0, 0.1], [2.0, 2.0]])
    d = distance_to_training(pool, X, [pool[2], pool[3], pool[5]], {"u0", "u1", "u4"})
    assert np.argmax(d) == 1 and d[1] > d[2] > d[0] > 0
