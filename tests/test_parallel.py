"""Rank roles and the task farm, with real mpirun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyacemaker_hpc.parallel.team import ROLES, Team, assign_groups

HERE = Path(__file__).parent
MPIRUN = Path(sys.executable).parent / "mpirun"


def test_groups_with_enough_ranks():
    g = assign_groups({"descriptor": 1, "dft": 2, "mace": 1, "train": 1}, [1, 2, 3, 4, 5])
    assert g["train"] == [5] and g["descriptor"] == [1] and g["dft"] == [2, 3] and g["mace"] == [4]


def test_zero_means_every_worker():
    g = assign_groups({"train": 1}, [1, 2, 3, 4])
    assert g["dft"] == g["mace"] == g["descriptor"] == [1, 2, 3, 4] and g["train"] == [4]


def test_groups_wrap_when_few_ranks():
    g = assign_groups({"descriptor": 1, "dft": 4, "mace": 2, "train": 1}, [1])
    assert all(g[r] == [1] for r in ROLES)


def test_sizes_spread_over_ranks():
    g = assign_groups({"descriptor": 1, "dft": 1, "mace": 1, "train": 2}, list(range(1, 8)))
    assert g["descriptor"] == [1] and g["dft"] == [2] and g["mace"] == [3] and g["train"] == [6, 7]


def test_serial_team_without_mpirun(monkeypatch):
    for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_STEP_ID", "HYDRA_CONTROL_FD"):
        monkeypatch.delenv(k, raising=False)
    t = Team.create({})
    assert t.serial and t.is_coordinator and t.groups["dft"] == [0]


def _run(n, costs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    res = subprocess.run([str(MPIRUN), "-n", str(n), sys.executable, str(HERE / "mpi_scripts" / "farm_check.py"),
                          ",".join(map(str, costs))], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    line = next(l for l in res.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[7:])


@pytest.mark.mpirun
def test_farm_one_task_at_a_time_under_mpirun():
    # one long task and many short ones: dynamic farming keeps the makespan near the long one
    costs = [1.5] + [0.1] * 12
    out = _run(4, costs)
    assert out["size"] == 4
    ranks = out["ranks"]
    assert len(ranks) == 13
    assert "task 3 fails on purpose" in ranks["3"]  # a failing task is reported, others go on
    used = {r for r in ranks.values() if isinstance(r, int)}
    assert used <= set(out["groups"]["dft"]) and len(used) >= 2
    ideal = max(1.5, sum(costs) / len(out["groups"]["dft"]))
    assert out["wall"] < ideal * 1.2 + 0.5, out


def _echo(k):
    return k


def test_farm_hands_out_costliest_first(monkeypatch):
    for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_STEP_ID", "HYDRA_CONTROL_FD"):
        monkeypatch.delenv(k, raising=False)
    from pyacemaker_hpc.parallel import Farm

    cost = {"a": 1.0, "b": 30.0, "c": 5.0, "d": 5.0}
    order = []
    Farm(Team.create({})).map("dft", [(k, _echo, (k,)) for k in cost], lambda k, r: order.append(r),
                              cost=cost.__getitem__)
    assert order == ["b", "c", "d", "a"]  # longest first; ties keep submission order


def test_dft_cost_estimate_grows_with_atoms_and_kpoints():
    from ase.build import bulk

    from pyacemaker_hpc.oracle._common import estimated_cost

    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    assert estimated_cost(cell * (2, 2, 2), 2.0) > estimated_cost(cell, 2.0)  # 32 atoms vs 4
    assert estimated_cost(cell, 4.0) > estimated_cost(cell, 1.0)  # denser k-mesh
    assert estimated_cost(cell) == 64.0  # no k-point density (EMT, any ASE calculator): atoms^3


def test_training_subprocess_logs_progress_and_honours_timeout(tmp_path, caplog):
    import logging
    import re

    from pyacemaker_hpc.tools.logged_run import run_with_progress

    script = "import time\nfor k in range(1, 6):\n    print(f'Iteration #{k}', flush=True); time.sleep(0.1)\n"
    with caplog.at_level(logging.INFO, logger="pyacemaker_hpc"):
        code = run_with_progress([sys.executable, "-c", script], tmp_path, dict(os.environ), tmp_path / "out.txt",
                                 30, label="fit", pattern=re.compile(r"Iteration\s+#(\d+)"), total=10, every_s=0.25)
    assert code == 0 and "Iteration #5" in (tmp_path / "out.txt").read_text()
    assert any(re.search(r"fit: \d/10, .* ETA", r.getMessage()) for r in caplog.records), caplog.text
    with pytest.raises(subprocess.TimeoutExpired):
        run_with_progress([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path, dict(os.environ),
                          tmp_path / "slow.txt", 0.5, label="slow", pattern=re.compile(r"(\d+)"), total=1)
