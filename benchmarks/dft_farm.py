"""Makespan and per-job overhead of the DFT task farm (Farm.map + a Campaign commit per result).

    .venv/bin/python benchmarks/dft_farm.py [--jobs 40] [--seed 0] [--workers 1 2 4]
        [--n-overhead 500] [--pad-mb 0] [--estimate-noise 0.3] [--out runs/benchmarks]

Each result is committed as labelling.py does (``cache_label`` of a 64-atom Label: file
copy + fsync + rename). Jobs SLEEP, so mpirun -n 5 on 2 cores does not distort the makespan.
The script relaunches itself (--worker-mode) serially and under ``mpirun -n W+1`` (rank 0
coordinates; all W workers in the dft group). Makespan: heavy-tailed durations (90 % in
0.05-0.3 s, 10 % in 1-3 s) in submission order; ideal = lower bound max(longest, sum/W,
d[W-1]+d[W] sorted desc); fifo / LPT = greedy hand-out in submission / longest-first order,
simulated with zero overhead. Two real runs per rank count: jobs in submission order, and
jobs handed out by the farm's ``cost=`` ordering as the pipeline does (labelling.py passes
``estimated_cost``: k-points x atoms^3); here the estimate is the true duration times a
log-normal error of sigma --estimate-noise (0.27 measured: GPAW 4-atom Cu cells, seconds
vs estimate, which cannot see SCF iteration counts). Overhead: --n-overhead zero-cost jobs, 1 worker, with and without commits. --pad-mb pads
the campaign so each commit copies a file of realistic size.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pyacemaker_hpc.campaign import Campaign, cache_label
from pyacemaker_hpc.core.models import Label
from pyacemaker_hpc.parallel import Farm, Team
from pyacemaker_hpc.parallel.team import ROLES, assign_groups

ROOT = Path(__file__).resolve().parents[1]
MPIRUN = Path(sys.executable).parent / "mpirun"
N_ATOMS = 64


def fake_dft(k: int, seconds: float) -> Label:
    time.sleep(seconds)  # stands in for the DFT call; returns what dft_task would
    rng = np.random.default_rng(k)
    return Label(energy=-3.5 * N_ATOMS + rng.normal(), forces=rng.normal(size=(N_ATOMS, 3)),
                 stress=rng.normal(size=6), seconds=seconds)


def durations(n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.05, 0.3, n)
    d[rng.choice(n, max(1, n // 10), replace=False)] = rng.uniform(1.0, 3.0, max(1, n // 10))
    return [float(x) for x in d]


def greedy(d: list[float], w: int) -> float:
    """Makespan of handing tasks out in this order to the first free of w workers."""
    free = [0.0] * w
    for x in d:
        free[free.index(min(free))] += x
    return max(free)


def lower_bound(d: list[float], w: int) -> float:
    s = sorted(d, reverse=True)
    return max(s[0], sum(d) / w, s[w - 1] + s[w] if len(s) > w else 0.0)


def estimates(d: list[float], noise: float, seed: int) -> list[float]:
    """What a cost model would say: the true duration with a log-normal error."""
    rng = np.random.default_rng(seed + 1000)
    return [x * float(np.exp(rng.normal(0.0, noise))) for x in d]


def run_farm(farm: Farm, camp: Campaign | None, tasks: list, cost=None) -> dict:
    out, commit_s = {}, [0.0]

    def on_result(key, res):
        out[key] = res
        if camp is None:
            return
        t = time.perf_counter()
        cache_label(camp, "dft", "bench", f"uid{key:05d}", res)
        commit_s[0] += time.perf_counter() - t

    t0 = time.perf_counter()
    farm.map("dft", tasks, on_result, cost=cost)
    return {"wall_s": time.perf_counter() - t0, "commit_s": commit_s[0], "n": len(tasks),
            "file_mb": camp.path.stat().st_size / 1e6 if camp else 0.0}


def worker_mode(a) -> None:
    team = Team.create({})
    if not team.serial:  # all workers in the dft group (Team.create keeps the last for train)
        team.groups = {r: list(range(1, team.size)) for r in ROLES}
    farm = Farm(team)
    if not team.is_coordinator:
        return farm.serve()
    work, res = Path(tempfile.mkdtemp(prefix="dft_farm_")), {"size": team.size}
    d = durations(a.jobs, a.seed)
    runs = {"makespan": [(k, fake_dft, (k, x)) for k, x in enumerate(d)]}
    runs["makespan_cost"] = runs["makespan"]
    est = estimates(d, a.estimate_noise, a.seed)
    if team.size <= 2:  # per-job overhead: serial and 1 worker only
        runs["commit"] = runs["nocommit"] = [(k, fake_dft, (k, 0.0)) for k in range(a.n_overhead)]
    for name, tasks in runs.items():
        camp = None if name == "nocommit" else Campaign(work / f"{name}.h5")
        if camp is not None and a.pad_mb:
            camp.write_array("descriptors/pad", np.zeros(int(a.pad_mb * 1e6) // 8))
        res[name] = run_farm(farm, camp, tasks, est.__getitem__ if name == "makespan_cost" else None)
        camp is not None and camp.close()
    farm.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps(res), flush=True)


def run_worker_mode(cmd: list[str], workers: int, env: dict, timeout: float) -> dict:
    """Run a benchmark's own ``--worker-mode`` command serially (workers = 0) or under
    ``mpirun -n workers+1``; return the JSON its rank 0 printed after ``RESULT `` and the
    launch time. Shared by the farm and scaling benchmarks."""
    if workers:
        cmd = [str(MPIRUN), "-n", str(workers + 1), *cmd]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    res = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    return dict(res, launch_s=time.perf_counter() - t0)


def launch(workers: int, a) -> dict:
    cmd = [sys.executable, __file__, "--worker-mode", "--jobs", str(a.jobs), "--seed", str(a.seed),
           "--n-overhead", str(a.n_overhead), "--pad-mb", str(a.pad_mb),
           "--estimate-noise", str(a.estimate_noise)]
    return run_worker_mode(cmd, workers, dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)), 900)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, typ, default in (("--jobs", int, 40), ("--seed", int, 0), ("--n-overhead", int, 500),
                               ("--pad-mb", float, 0.0), ("--estimate-noise", float, 0.3),
                               ("--out", str, str(ROOT / "runs" / "benchmarks"))):
        ap.add_argument(flag, type=typ, default=default)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--worker-mode", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker_mode:
        return worker_mode(a)
    d = durations(a.jobs, a.seed)
    print(f"{a.jobs} jobs, seed {a.seed}: sum {sum(d):.2f} s, longest {max(d):.2f} s, "
          f"{sum(x >= 1 for x in d)} long; jobs SLEEP, so oversubscribing {os.cpu_count()} cores "
          f"does not distort the makespan (commits and polling do use CPU)")
    print(f"{'run':<13}{'order':<11}{'makespan s':>11}{'ideal s':>8}{'/ideal':>7}{'fifo s':>7}"
          f"{'LPT s':>6}{'commit s':>9}  dft ranks from Team.create (default parallel:)")
    rows = {}
    for w in [0, *a.workers]:
        r, wk = launch(w, a), max(w, 1)
        lb, fifo, lpt = lower_bound(d, wk), greedy(d, wk), greedy(sorted(d)[::-1], wk)
        real = assign_groups({}, list(range(1, w + 1)))["dft"] if w else [0]
        name = f"mpirun -n {w + 1}" if w else "serial"
        rows[name] = dict(r, workers=wk, ideal_s=lb, fifo_s=fifo, lpt_s=lpt, team_create_dft=real,
                          ratio=r["makespan"]["wall_s"] / lb, ratio_cost=r["makespan_cost"]["wall_s"] / lb)
        for order, m in (("submission", r["makespan"]), ("cost", r["makespan_cost"])):
            print(f"{name:<13}{order:<11}{m['wall_s']:>11.2f}{lb:>8.2f}{m['wall_s'] / lb:>7.2f}"
                  f"{fifo:>7.2f}{lpt:>6.2f}{m['commit_s']:>9.2f}  {real}"
                  + ("  MISSES 1.2x" if m["wall_s"] / lb > 1.2 else ""))
    print(f"\nper-job overhead, {a.n_overhead} zero-cost jobs (64-atom labels, pad {a.pad_mb} MB):")
    for name in [k for k in ("serial", "mpirun -n 2") if k in rows]:
        c, n = rows[name]["commit"], rows[name]["nocommit"]
        print(f"  {name:<12} no commit {1e3 * n['wall_s'] / n['n']:7.2f} ms/job | with commit "
              f"{1e3 * c['wall_s'] / c['n']:7.2f} ms/job (commit alone {1e3 * c['commit_s'] / c['n']:.2f}"
              f" ms) | campaign at end {c['file_mb']:.2f} MB")
    out = Path(a.out) / "dft_farm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"durations": d, "args": vars(a), "runs": rows}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
