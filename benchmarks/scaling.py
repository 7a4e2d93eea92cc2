"""Parallel scaling of the pipeline's farmed steps, and what the campaign file costs at
10,000 structures.

    OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python benchmarks/scaling.py [--quick] \
        [--parts farm io] [--workers 1 2 4] [--kinds descriptor label dft] [--dft gpaw|ase] \
        [--n-descriptor 800] [--n-label 1600] [--n-dft 12] [--n-io 10000] [--n-commits 200] \
        [--out runs/benchmarks/scaling.json]

``--quick``: 400 / 800 / 6 structures for the three farmed kinds, 2,000 structures and 50
commits for the file (about 3 minutes).

* ``farm``: the script relaunches itself (``--worker-mode``) serially (no MPI: rank 0 runs
  every task inline, the pipeline's path without mpirun) and under ``mpirun -n W+1`` for
  each W of ``--workers`` (rank 0 coordinates, the W workers hold every role, as
  ``parallel: 0`` gives). It times the pipeline's own task functions through the project's
  ``Farm.map``, one task at a time per worker:
  - ``descriptor`` (step 1): ``steps.tasks.descriptor_task``, MACE invariants of the demo
    foundation pooled mean+std, on mutated Cu fcc/bcc/hcp cells of 1-8 atoms
    (``benchmarks/direct_sampling.py``'s ``build_pool``) in chunks of step 1's ``CHUNK``;
  - ``label`` (step 5): ``steps.tasks.mace_label_task``, the demo foundation's batched
    labels (float64) of the same kind of cells, in chunks of step 5's ``CHUNK``;
  - ``dft`` (steps 2 and evaluate): ``steps.tasks.dft_task`` on strained 1-atom fcc Cu cells,
    real GPAW PBE (PW 250 eV, k-point density 1.5; ~2.5 s each) or with ``--dft ase`` ASE's
    EMT (microseconds: then the figure is the farm's own overhead), each in its own
    directory, handed out longest first by ``estimated_cost`` as the pipeline does.
  Before each timed map every worker gets one untimed task (model load, first graph,
  GPAW's set-up). Reported: wall time on rank 0, speed-up against serial and against one
  worker, parallel efficiency E(W) = T(1 worker) / (W x T(W)), the CPU seconds the tasks got
  per wall second (1.0 = a whole core each) and the load average. This machine's core count
  is printed: with W workers on fewer cores the run is oversubscribed and E(W) cannot
  exceed cores / W; on a shared machine another job takes cores too.
* ``io``: a campaign of ``--n-io`` Cu cells of 8-64 atoms (``/tmp``, removed afterwards):
  ``write_structures`` and ``put_labels`` of all labels as one commit each, then
  ``--n-commits`` one-item commits of ``put_labels`` and of ``cache_label`` (the per-item
  DFT path), ms per commit and the cost extrapolated to one commit per structure; the file
  size; reading everything back (``read_structures``, ``read_labels``, ``cached_labels``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from direct_sampling import build_pool, load  # noqa: E402
from dft_farm import run_worker_mode  # noqa: E402  (mpirun relaunch + RESULT parsing)
from uncertainty import save  # noqa: E402  (results JSON at args.out)

from pyacemaker_hpc.campaign import Campaign, cache_label, cached_labels  # noqa: E402
from pyacemaker_hpc.core.models import Label  # noqa: E402

MPIRUN = Path(sys.executable).parent / "mpirun"
DEMO_MACE = str(ROOT / "pyacemaker_hpc" / "data" / "cu_demo_foundation_s0.model")
GPAW = {"ecut": 250.0, "kpoint_density": 1.5}


# ----------------------------------------------------------------------------------------
# worker side: the pipeline's tasks, timed where they run
def timed_task(fn, *args):
    """Run a pipeline task on a worker; return a small digest of its result (so the
    coordinator can check every run computed the same) with the task's CPU and wall s."""
    c, w = time.process_time(), time.perf_counter()
    res = fn(*args)
    cpu, wall = time.process_time() - c, time.perf_counter() - w
    if isinstance(res, np.ndarray):
        digest = float(np.sum(res))
    elif isinstance(res, list):
        digest = float(sum(lab.energy for lab in res))
    else:
        digest = float(res.energy)
    return digest, cpu, wall


def dft_config(kind: str, workdir: Path):
    from pyacemaker_hpc.config import parse_config

    calc = {"gpaw": "GPAW", "ase": "ASE"}[kind]
    return parse_config({"system": {"elements": ["Cu"], "prototypes": [{"element": "Cu"}]},
                         "distillation": {"step2_active_learning": {"dft_calculator": calc},
                                          "step3_mace_finetune": {"base_model": DEMO_MACE}},
                         "dft": {"gpaw": GPAW, "workdir": str(workdir)}})


#: the farm role each kind runs on in the pipeline
ROLE = {"descriptor": "descriptor", "label": "mace", "dft": "dft"}


def task_lists(a, workdir: Path) -> dict:
    """kind -> (task function, per-task argument tuples, warm-up arguments for worker i)."""
    from pyacemaker_hpc.steps.s1_sampling import CHUNK as S1_CHUNK
    from pyacemaker_hpc.steps.s5_label import CHUNK as S5_CHUNK
    from pyacemaker_hpc.steps.tasks import dft_task, descriptor_task, mace_label_task
    from pyacemaker_hpc.tools.toy_data import perturbed_bulk

    pool, _ = build_pool(max(a.n_descriptor, a.n_label), 0, "Cu")
    out = {}
    if "descriptor" in a.kinds:
        head = ("mace", ("mean", "std"), DEMO_MACE, ("Cu",), "cpu", "float64")
        s = pool[:a.n_descriptor]
        out["descriptor"] = (descriptor_task, [(*head, s[i:i + S1_CHUNK]) for i in range(0, len(s), S1_CHUNK)],
                             lambda i, h=head: (*h, pool[-1:]))
    if "label" in a.kinds:
        head = ((DEMO_MACE,), "cpu", "float64", 32)
        s = pool[:a.n_label]
        out["label"] = (mace_label_task, [(*head, s[i:i + S5_CHUNK]) for i in range(0, len(s), S5_CHUNK)],
                        lambda i, h=head: (*h, pool[-1:]))
    if "dft" in a.kinds:
        cfg = dft_config(a.dft, workdir)
        cells = perturbed_bulk("Cu", n=a.n_dft + 1, seed=0, a=3.63, cubic=False)
        out["dft"] = (dft_task, [(cfg, c, str(workdir / f"dft{k}")) for k, c in enumerate(cells[1:])],
                      lambda i: (cfg, cells[0], str(workdir / f"warmup{i}")))
    return out


def timed_map(farm, team, role: str, fn, tasks: list, warm, cost=None) -> dict:
    """One untimed warm-up task per worker (the farm hands the first tasks to every idle
    worker at once), then ``Farm.map`` of ``tasks`` on ``role``, timed on rank 0."""
    from pyacemaker_hpc.parallel import TaskFailed

    n_workers = max(1, team.size - 1)
    got: dict = {}

    def on_result(k, r):
        if isinstance(r, TaskFailed):
            raise RuntimeError(r.error)
        got[k] = r

    farm.map(role, [(("w", i), timed_task, (fn, *warm(i))) for i in range(n_workers)], on_result)
    got.clear()
    load1 = os.getloadavg()[0]
    t = time.perf_counter()
    farm.map(role, [(k, timed_task, (fn, *args)) for k, args in enumerate(tasks)], on_result, cost=cost)
    wall = time.perf_counter() - t
    cpu, task_wall = sum(r[1] for r in got.values()), sum(r[2] for r in got.values())
    return {"wall_s": wall, "n_tasks": len(tasks), "task_cpu_s": cpu, "task_wall_s": task_wall,
            "cpu_share": cpu / max(task_wall, 1e-12), "utilization": task_wall / (n_workers * wall),
            "checksum": round(sum(r[0] for r in got.values()), 6), "load1_before": load1,
            "load1_after": os.getloadavg()[0]}


def worker_mode(a) -> None:
    """One rank of the launched job: rank 0 maps every kind, the others serve."""
    import torch

    from pyacemaker_hpc.oracle._common import estimated_cost
    from pyacemaker_hpc.parallel import Farm, Team
    from pyacemaker_hpc.parallel.team import ROLES

    torch.set_num_threads(1)
    team = Team.create({})
    if not team.serial:  # every worker holds every role (parallel: 0 for all groups)
        team.groups = {r: list(range(1, team.size)) for r in ROLES}
    farm = Farm(team)
    if not team.is_coordinator:
        return farm.serve()
    work = Path(tempfile.mkdtemp(prefix="scaling_farm_"))
    res = {"ranks": team.size, "workers": max(0, team.size - 1)}
    try:
        for kind, (fn, tasks, warm) in task_lists(a, work).items():
            cost = None
            if kind == "dft":  # longest first, as steps/labelling.py hands out DFT jobs
                cost = {k: estimated_cost(t[1], GPAW["kpoint_density"]) for k, t in enumerate(tasks)}.__getitem__
            res[kind] = timed_map(farm, team, ROLE[kind], fn, tasks, warm, cost)
    finally:
        farm.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------------------
# coordinator of the benchmark: launches, tables
def launch(workers: int, a) -> dict:
    """Run the worker mode serially (workers = 0) or under mpirun -n workers+1."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-mode", "--kinds", *a.kinds, "--dft", a.dft,
           "--n-descriptor", str(a.n_descriptor), "--n-label", str(a.n_label), "--n-dft", str(a.n_dft)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
    if not workers:
        env["PYACEMAKER_NO_MPI"] = "1"
    return run_worker_mode(cmd, workers, env, 1800)


def part_farm(a, res) -> None:
    cores = os.cpu_count() or 1
    print(f"farm scaling on {cores} cores ({load()}); kinds {a.kinds}, DFT = {a.dft}", flush=True)
    runs = []
    for w in [0, *a.workers]:
        label = "serial" if w == 0 else f"mpirun -n {w + 1}"
        note = f" -- {w} workers on {cores} cores: OVERSUBSCRIBED" if w > cores else ""
        print(f"  {label} ({w} worker rank(s)){note} ...", flush=True)
        runs.append(launch(w, a))
        res["farm"] = {"cores": cores, "runs": runs, "table": efficiency_table(runs, a.kinds, cores)}
        save(a, res)


def efficiency_table(runs: list, kinds: list, cores: int) -> list:
    """Speed-up against serial and one worker, efficiency T(1) / (W T(W)), the most this
    machine allows, min(W, cores) / W (rank 0 mostly sleeps while polling), and eff*: the
    same efficiency from full-core wall times, wall x cores used / W -- what the run would
    take if each worker had had a core of its own (farm overhead and imbalance kept, the CPU
    that other jobs or oversubscription took removed): a hypothetical for W > cores."""
    rows = []
    for kind in kinds:
        serial = next((r[kind]["wall_s"] for r in runs if r["workers"] == 0), None)
        one = next((r[kind]["wall_s"] for r in runs if r["workers"] == 1), None)
        one_full = next((full_core_s(r[kind], 1) for r in runs if r["workers"] == 1), None)
        for r in runs:
            m, w = r[kind], r["workers"]
            rows.append({"kind": kind, "workers": w, "processes": w + 1 if w else 1, "wall_s": m["wall_s"],
                         "n_tasks": m["n_tasks"], "speedup_vs_serial": serial / m["wall_s"] if serial else None,
                         "speedup_vs_1_worker": one / m["wall_s"] if one and w else None,
                         "efficiency": one / (w * m["wall_s"]) if one and w else None,
                         "max_efficiency_here": min(w, cores) / w if w else None,
                         "efficiency_full_cores": one_full / (w * full_core_s(m, w)) if one_full and w else None,
                         "cpu_share": m["cpu_share"], "utilization": m["utilization"],
                         "cores_used": m["task_cpu_s"] / m["wall_s"],
                         "oversubscribed": w > cores, "checksum": m["checksum"],
                         "load1": [m["load1_before"], m["load1_after"]]})
    return rows


def full_core_s(m: dict, workers: int) -> float:
    """Wall time scaled to ``workers`` whole cores: wall x (CPU the tasks got / wall) / W."""
    return m["wall_s"] * (m["task_cpu_s"] / m["wall_s"]) / max(workers, 1)


def print_farm(farm: dict) -> None:
    print(f"\n== farmed steps: wall time on rank 0 ({farm['cores']} cores on this machine) ==")
    print(f"{'kind':<11}{'workers':>8}{'procs':>6}{'tasks':>6}{'wall s':>8}{'vs serial':>10}{'vs 1 wkr':>9}"
          f"{'eff':>6}{'max here':>9}{'cores used':>11}{'eff*':>6}{'cpu/wall':>9}{'util':>6}{'load1':>12}")
    f = lambda v, fmt: (fmt % v) if v is not None else "-"  # noqa: E731
    for r in farm["table"]:
        print(f"{r['kind']:<11}{r['workers']:>8}{r['processes']:>6}{r['n_tasks']:>6}{r['wall_s']:8.2f}"
              f"{f(r['speedup_vs_serial'], '%.2f'):>10}{f(r['speedup_vs_1_worker'], '%.2f'):>9}"
              f"{f(None if r['efficiency'] is None else 100 * r['efficiency'], '%.0f%%'):>6}"
              f"{f(None if r['max_efficiency_here'] is None else 100 * r['max_efficiency_here'], '%.0f%%'):>9}"
              f"{r['cores_used']:11.2f}"
              f"{f(None if r['efficiency_full_cores'] is None else 100 * r['efficiency_full_cores'], '%.0f%%'):>6}"
              f"{r['cpu_share']:9.2f}{r['utilization']:6.2f}"
              f"{r['load1'][0]:6.2f}/{r['load1'][1]:5.2f}"
              + ("  oversubscribed" if r["oversubscribed"] else ""))
    for kind in {r["kind"] for r in farm["table"]}:
        sums = {r["checksum"] for r in farm["table"] if r["kind"] == kind}
        if len(sums) > 1:
            print(f"WARNING: {kind} results differ between runs: {sorted(sums)}")
    print("eff = T(1 worker) / (W x T(W workers)); 'max here' = the most this machine's cores allow\n"
          "(rank 0 mostly sleeps while polling); cores used = task CPU seconds per wall second (what\n"
          "the workers actually got: other jobs on the machine take the rest); eff* = eff from wall\n"
          "times scaled to one whole core per worker (wall x cores used / W): overhead and imbalance\n"
          "kept, contention removed -- an estimate, not a measurement; cpu/wall = CPU seconds\n"
          "per task wall second (below 1: the task shared its core); util = share of the wall time\n"
          "the workers spent inside tasks (the rest is farm overhead and waiting for the last task).")


# ----------------------------------------------------------------------------------------
# the campaign file at scale
def io_structures(n: int, seed: int = 0) -> list:
    """``n`` rattled fcc Cu cells of 8, 16, 32 or 64 atoms (cubic cell repeated)."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    reps = [(2, 1, 1), (2, 2, 1), (2, 2, 2), (4, 2, 2)]
    base = [bulk("Cu", "fcc", a=3.61, cubic=True).repeat(r) for r in reps]
    out = []
    for k in rng.integers(len(base), size=n):
        at = base[k].copy()
        at.positions += rng.normal(0.0, 0.05, at.positions.shape)
        out.append(at)
    return out


def io_label(n_atoms: int, rng) -> Label:
    return Label(energy=-3.5 * n_atoms + rng.normal(), forces=rng.normal(size=(n_atoms, 3)),
                 stress=rng.normal(size=6), seconds=1.0)


def timed(fn, *args) -> tuple:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def part_io(a, res) -> None:
    """Bulk and per-item commits on a campaign of a.n_io structures, then read-back."""
    rng = np.random.default_rng(0)
    structs = io_structures(a.n_io)
    labels = {i: io_label(len(s), rng) for i, s in enumerate(structs)}
    tmp = Path(tempfile.mkdtemp(prefix="scaling_io_", dir="/tmp"))
    try:
        with Campaign(tmp / "campaign.h5") as camp:
            r = {"n_structures": a.n_io, "n_atoms": int(sum(len(s) for s in structs))}
            _, r["write_structures_s"] = timed(camp.write_structures, "bench", structs)
            _, r["init_labels_s"] = timed(camp.init_labels, "bench", "mace")
            _, r["put_labels_bulk_s"] = timed(camp.put_labels, "bench", "mace", labels)
            r["file_mb"] = camp.path.stat().st_size / 1e6
            idx = rng.choice(a.n_io, size=min(a.n_commits, a.n_io), replace=False)
            _, t = timed(lambda: [camp.put_labels("bench", "mace", {int(i): labels[int(i)]}) for i in idx])
            r["put_labels_per_item_ms"] = 1e3 * t / len(idx)
            uids = [s.info.get("uid") for s in camp.read_structures("bench")]
            _, t = timed(lambda: [cache_label(camp, "dft", "bench", uids[int(i)], labels[int(i)]) for i in idx])
            r["cache_label_per_item_ms"] = 1e3 * t / len(idx)
            r["n_commits"] = len(idx)
            r["file_mb_after"] = camp.path.stat().st_size / 1e6
            _, r["read_structures_s"] = timed(camp.read_structures, "bench")
            _, r["read_labels_s"] = timed(camp.read_labels, "bench", "mace")
            _, r["cached_labels_s"] = timed(cached_labels, camp, "dft", "bench")
        r["per_item_extrapolated_s"] = {k: r[f"{k}_per_item_ms"] * a.n_io / 1e3 for k in ("put_labels", "cache_label")}
        res["io"] = r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_io(r: dict) -> None:
    n = r["n_structures"]
    print(f"\n== campaign file: {n:,} Cu cells of 8-64 atoms ({r['n_atoms']:,} atoms) ==")
    print(f"  write_structures (1 commit)       {r['write_structures_s']:8.2f} s")
    print(f"  init_labels (1 commit)            {r['init_labels_s']:8.2f} s")
    print(f"  put_labels, all {n:,} (1 commit)  {r['put_labels_bulk_s']:8.2f} s   file {r['file_mb']:.1f} MB")
    for k in ("put_labels", "cache_label"):
        print(f"  {k:<12} one item per commit  {r[f'{k}_per_item_ms']:8.1f} ms/commit ({r['n_commits']} commits)"
              f" -> {r['per_item_extrapolated_s'][k]:7.0f} s for {n:,} items one by one")
    print(f"  read back: structures {r['read_structures_s']:.2f} s, labels {r['read_labels_s']:.2f} s, "
          f"{r['n_commits']} cached DFT results {r['cached_labels_s']:.2f} s; file after {r['file_mb_after']:.1f} MB")
    print("  every commit copies the whole file (atomic copy + fsync + rename): per-item commits cost\n"
          "  O(file size); the pipeline commits DFT per item (minutes each) and cheap steps per chunk.")


# ----------------------------------------------------------------------------------------
QUICK = {"n_descriptor": 400, "n_label": 800, "n_dft": 6, "n_io": 2000, "n_commits": 50}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller run: " + json.dumps(QUICK))
    ap.add_argument("--parts", nargs="+", default=["farm", "io"], choices=["farm", "io"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--kinds", nargs="+", default=["descriptor", "label", "dft"], choices=["descriptor", "label", "dft"])
    ap.add_argument("--dft", choices=["gpaw", "ase"], default="gpaw")
    for flag, default in (("--n-descriptor", 800), ("--n-label", 1600), ("--n-dft", 12), ("--n-io", 10000),
                          ("--n-commits", 200)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "scaling.json"))
    ap.add_argument("--worker-mode", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--report-only", action="store_true", help="print the tables of --out")
    a = ap.parse_args(argv)
    if a.quick:
        for k, v in QUICK.items():
            if getattr(a, k) == ap.get_default(k):
                setattr(a, k, v)
    return a


def report(res: dict) -> None:
    if "farm" in res:
        print_farm(res["farm"])
    if "io" in res:
        print_io(res["io"])


def finish(args, res: dict, t0: float, report_fn) -> dict:
    """End of a benchmark run (speed.py uses it too): wall time and load average into the
    results, JSON to ``args.out``, the tables printed."""
    res.update(wall_s=round(time.time() - t0, 1), load_at_end=load())
    save(args, res)
    report_fn(res)
    print(f"\n{res['load_at_end']}; wall {res['wall_s']} s; wrote {args.out}")
    return res


def main(argv=None):
    a = parse(argv)
    if a.worker_mode:
        return worker_mode(a)
    if a.report_only:
        return report(json.loads(Path(a.out).read_text()))
    res = {"settings": {k: v for k, v in vars(a).items() if k != "worker_mode"}, "load_at_start": load()}
    t0 = time.time()
    if "io" in a.parts:
        part_io(a, res)
        save(a, res)
    if "farm" in a.parts:
        part_farm(a, res)
    return finish(a, res, t0, report)


if __name__ == "__main__":
    main()
