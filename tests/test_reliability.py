"""Reliability under mpirun -n 2: a DFT calculation that kills its own process ends the whole
job (MPICH aborts every rank), the campaign stays intact, and the crash markers of
RetryingOracle stop the crash loop: after ``dft.max_retries + 1`` deaths with the same
structure in flight it is recorded as ``process_crash`` and the campaign completes with
every other DFT result kept. And SIGTERM to the job's process group during DFT: a clean
stop, and a re-run that repeats no finished calculation.

The plain DFT loop with ACE descriptors (no MACE) keeps each run short; EMT is the 'DFT'.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import h5py
import pytest

from pipeline_config import BIN, cli_cmd, cli_env, dft_calls, run_cli, start_until_dft_calls, tiny_config
from pyacemaker_hpc.campaign import Campaign, CampaignLocked, cached_labels

AL = {"initial_dft": 4, "batch_size": 2, "dft_budget": 4, "max_iterations": 1, "gamma_threshold": 1.0,
      "n_candidates_per_iteration": 10}
pytestmark = pytest.mark.mpirun


def _config(tmp: Path, sleep: float = 0.0, **dft_kwargs) -> Path:
    cfg = tiny_config(tmp, __file__, [], sleep=sleep, distill=False,
                      **{"descriptors.kind": "ace", "active_learning": AL, "evaluation.n_holdout": 3,
                         "generator.n_candidates": 20, "pacemaker.max_iterations": 10})
    if dft_kwargs:
        import yaml

        data = yaml.safe_load(cfg.read_text())
        data["dft"]["ase"]["kwargs"].update(dft_kwargs.pop("kwargs", {}))
        data["dft"].update(dft_kwargs)
        cfg.write_text(yaml.safe_dump(data))
    return cfg


def _cmd(cfg: Path) -> list[str]:
    return cli_cmd(cfg, nranks=2)


def _run(cfg: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli(cfg, nranks=2, timeout=timeout)


def _steps(h5: Path) -> dict:
    with h5py.File(h5, "r") as f:
        return {s: str(f["steps"][s].attrs["status"]) for s in f["steps"]}


def _opens(h5: Path) -> None:
    """The file opens with h5py and the reader, and no process of the dead job holds the lock."""
    with h5py.File(h5, "r") as f:
        f.attrs["format_version"]
    Campaign(h5, readonly=True).steps()
    deadline = time.time() + 10  # the dead job's last thread may take a moment to let go
    while True:
        try:
            Campaign(h5).close()
            return
        except CampaignLocked:
            assert time.time() < deadline, "a process of the dead job still holds the campaign"
            time.sleep(0.05)


def test_crashing_calculation_ends_job_then_is_recorded_failed(tmp_path):
    crash = tmp_path / "crash_pick"
    cfg = _config(tmp_path, max_retries=1,
                  kwargs={"crash_file": str(crash), "crash_mode": "sigkill", "crash_skip": 2})
    h5 = tmp_path / "campaign.h5"
    finished_before = None
    for attempt in range(2):  # max_retries + 1 runs die with the structure in flight
        res = _run(cfg)
        assert res.returncode != 0, res.stdout[-3000:]
        _opens(h5)
        assert _steps(h5)["plain_dft_loop"] in ("running", "failed", "interrupted")
        crashes = (tmp_path / "crash_pick.log").read_text().split("\n")
        assert len([c for c in crashes if c]) == attempt + 1
        if finished_before is None:
            finished_before = dft_calls(tmp_path)
            assert len(finished_before) == 2
    res = _run(cfg)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert len((tmp_path / "crash_pick.log").read_text().split()) == 2 * 2  # no third crash
    assert all(s == "done" for s in _steps(h5).values())
    camp = Campaign(h5, readonly=True)
    labels = camp.read_labels("al_iter0", "dft")
    failed = [lab for lab in labels if lab.status == "failed"]
    assert len(failed) == 1 and failed[0].error.startswith("process_crash:"), [lab.error for lab in labels]
    assert sum(lab.status == "done" for lab in labels) == len(labels) - 1
    # every finished calculation was kept: none ran twice, the first run's are all there
    calls = dft_calls(tmp_path)
    assert max(Counter(calls).values()) == 1, Counter(calls)
    assert set(finished_before) <= set(calls)
    with h5py.File(h5, "r") as f:
        settings_keys = list(f["oracle_cache/dft"])
    cache = {}
    for settings in settings_keys:
        cache.update(cached_labels(camp, "dft", settings))
    assert sum(lab.status == "failed" for lab in cache.values()) == 1
    assert sum(lab.status == "done" for lab in cache.values()) == len(calls)
    status = subprocess.run([str(BIN / "pyacemaker-hpc"), "status", str(h5)], capture_output=True,
                            text=True, env=cli_env())
    assert status.returncode == 0, status.stderr


def test_sigterm_during_dft_stops_cleanly(tmp_path):
    cfg = _config(tmp_path, sleep=1.0)
    h5 = tmp_path / "campaign.h5"
    proc = start_until_dft_calls(cfg, tmp_path, 2, deadline_s=240, poll_s=0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    t0 = time.time()
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, out[-3000:]
    assert time.time() - t0 < 30  # GRACE_S (20 s) at most for the item in flight
    _opens(h5)
    assert _steps(h5)["plain_dft_loop"] in ("interrupted", "running"), out[-3000:]
    finished = dft_calls(tmp_path)
    res = _run(cfg)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert all(s == "done" for s in _steps(h5).values())
    calls = dft_calls(tmp_path)
    assert max(Counter(calls).values()) == 1, Counter(calls)  # no finished calculation repeated
    assert set(finished) <= set(calls)
