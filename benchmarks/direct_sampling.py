"""Does DIRECT / maximum-entropy selection cover the structure space better than random?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/direct_sampling.py \
        [--system Cu|CuAu] [--n-pool 2000] [--sizes 25 50 100] [--seeds 0 1 2] \
        [--spaces ace mace] [--mace-model PATH] [--out runs/benchmarks/direct_sampling.json]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/direct_sampling.py --farm [--ranks 1 2 3] \
        [--farm-kinds ace mace] [--chunk 25]        # descriptor farm timing, serial vs mpirun

Builds a real pool of candidates (MutationGenerator on the SYSTEMS prototypes: Cu
fcc/bcc/hcp, or Cu-Au), computes ACE B-basis and MACE invariant descriptors (MACE:
--mace-model, else the demo foundation in pyacemaker_hpc/data/*.model, else a tiny MACE
trained here the tests' way; Cu only), selects N structures with direct /
maximize_entropy / random over several seeds, and reports, in the standardised PCA space
(95 % variance) of the descriptor the selection was made in and of the other one:

* scov      - THE coverage of the space: r_N is the finest radius at which N points can
              cover the region the pool occupies (smallest r whose greedy r-net of the pool
              has <= N points); scov = share of that net (the occupied space at resolution
              r_N, every part counted once, however densely the pool crowds there) within
              r_N of a selected structure. 1.0 = no part of the pool's region is farther
              than r_N from the selection. Depends on the pool and N only.
* pcov      - share of the pool's *points* within r_N of a pick (density-weighted), and
              pc/2 the same at r_N / 2;
* cov50/90  - share of pool points within the 50 % / 90 % quantile of the 5th-nearest-
              neighbour distance: radii 2-20x below r_N, so they count near-duplicates of
              the picks and reward sampling the pool's dense families (random does);
* FCS       - DIRECT's feature coverage score: share of occupied 100-bin histogram cells
              per PC that the selection reaches (extent, density-blind);
* fill      - largest distance from a pool point to the selection (covering radius);
* ld_med    - log det of an RBF kernel over the picks, bandwidth = median pairwise distance
              (the entropy objective's own bandwidth saturates; kept in the JSON as logdet);
* strata    - how many (seed prototype, mutation kind) groups the selection touches;
* timing    - descriptor ms per structure and selection seconds.

``--farm`` times the pipeline's descriptor task (``steps.tasks.descriptor_task``) through
the project's ``parallel.Farm`` in chunks of 25 (step 1's CHUNK): serially (no MPI, rank 0
inline), with ``mpirun -n 2`` (one worker) and ``mpirun -n 3`` (two workers), for ACE and
MACE, with the load average beside every figure (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]

from pyacemaker_hpc.config import GeneratorCfg, Prototype, SystemCfg  # noqa: E402
from pyacemaker_hpc.structure_generator.descriptors import make_descriptor  # noqa: E402
from pyacemaker_hpc.structure_generator.direct import (EntropySelector, coverage,  # noqa: E402
                                                       feature_coverage_score, fill_distance,
                                                       make_selector, pca_space)
from pyacemaker_hpc.structure_generator.mutations import MutationGenerator, prototype_structures  # noqa: E402


#: the benchmark systems: a unary pool (Cu fcc/bcc/hcp) and a binary one (Cu-Au: the pure
#: fcc metals, L1_2 Cu3Au and CuAu3, B2 CuAu; mutations add substitutions and antisites).
#: Both are labelled by ASE's EMT in benchmarks/direct_downstream.py.
SYSTEMS = {
    "Cu": (["Cu"], [("Cu", "fcc", None), ("Cu", "bcc", None), ("Cu", "hcp", None)]),
    "CuAu": (["Cu", "Au"], [("Cu", "fcc", None), ("Au", "fcc", None), ("Cu", "l12", ["Cu", "Au"]),
                            ("Au", "l12", ["Au", "Cu"]), ("Cu", "b2", ["Cu", "Au"])]),
}


def build_pool(n_pool: int, seed: int = 0, system: str = "Cu"):
    """``n_pool`` mutated structures of ``system`` (see SYSTEMS) and a summary dict.
    A different ``seed`` gives an independent draw from the same generator."""
    elements, protos = SYSTEMS[system]
    sysc = SystemCfg(elements=elements, prototypes=[Prototype(element=e, structure=s, elements=els)
                                                    for e, s, els in protos])
    cfg = GeneratorCfg(n_candidates=n_pool, supercells=[[1, 1, 1], [2, 1, 1], [2, 2, 2]])
    gen = MutationGenerator(cfg, sysc.elements)
    t = time.perf_counter()
    pool = gen.generate(prototype_structures(sysc), np.random.default_rng(seed))
    info = {"system": system, "elements": elements, "seed": seed, "n_pool": len(pool),
            "seconds": time.perf_counter() - t, "n_rejected": gen.n_rejected,
            "rejected_by_kind": dict(gen.rejected_by_kind), "kinds": dict(gen.generated_by_kind),
            "atoms_per_structure": dict(Counter(len(a) for a in pool))}
    return pool, info


# ----------------------------------------------------------------------------------------
# coverage of the space (not of the pool's density)
def r_net(Z: np.ndarray, r: float, order: np.ndarray) -> np.ndarray:
    """Greedy r-net of the rows of Z, visited in ``order``: a point is kept unless a kept
    point lies within ``r``. The kept points are pairwise > r apart and every pool point is
    within r of one: the region the pool occupies, at resolution r, each part of it counted
    once however many pool points crowd there."""
    kept: list[int] = []
    K = np.empty((len(Z), Z.shape[1]))
    r2 = r * r
    for i in order:
        if kept and np.min(np.sum((K[:len(kept)] - Z[i]) ** 2, axis=1)) <= r2:
            continue
        K[len(kept)] = Z[i]
        kept.append(int(i))
    return np.array(kept, dtype=int)


def resolution_for(Z: np.ndarray, n: int, seed: int = 0, iters: int = 40):
    """``(r_n, net)``: the smallest radius (bisection) whose r-net of the pool has at most
    ``n`` points, i.e. the finest resolution at which n structures can cover the whole
    occupied space, and that net. Depends on the pool's geometry and n only, not on any
    selector (the visiting order is a fixed random permutation)."""
    Z = np.asarray(Z, dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(Z))
    lo, hi = 0.0, float(2.0 * np.max(np.linalg.norm(Z - Z.mean(0), axis=1))) + 1e-12
    best = r_net(Z, hi, order)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        net = r_net(Z, mid, order)
        if len(net) <= n:
            hi, best = mid, net
        else:
            lo = mid
    return hi, best


def space_coverage(Z: np.ndarray, selected_idx, r: float, net: np.ndarray) -> float:
    """Share of the occupied space within ``r`` of a selected structure: the fraction of
    the r-net's points (see :func:`resolution_for`) that have a selected point within r.
    1.0 = nothing in the pool's region is farther than r from the selection (the net
    itself scores 1.0). Density-blind, unlike ``coverage`` (share of pool *points*)."""
    d, _ = cKDTree(np.asarray(Z)[np.asarray(selected_idx, dtype=int)]).query(np.asarray(Z)[net], k=1)
    return float(np.mean(d <= r))


def find_mace_model(arg: str | None) -> str:
    if arg:
        return arg
    demo = sorted((ROOT / "pyacemaker_hpc" / "data").glob("*.model"))
    if demo:
        return str(demo[0])
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import _train_tiny_mace  # the tests' recipe: 8x0e+8x1o, EMT Cu

    d = Path(tempfile.mkdtemp(prefix="bench_mace_"))
    print(f"training a tiny MACE in {d} ...", flush=True)
    return str(_train_tiny_mace(d))


def timed_descriptors(kind: str, pool, mace_model: str | None, elements=("Cu",)):
    d = make_descriptor(kind, ("mean", "std"), mace_model=mace_model, elements=list(elements))
    d.compute(pool[0])  # warm-up (model load, first graph)
    t = time.perf_counter()
    X = d.compute_many(pool)
    dt = time.perf_counter() - t
    n_atoms = sum(len(a) for a in pool)
    return X, {"name": d.name, "dim": int(X.shape[1]), "ms_per_structure": 1e3 * dt / len(pool),
               "us_per_atom": 1e6 * dt / n_atoms, "seconds": dt}


def load() -> str:
    """The 1/5/15-minute load averages (the machine is shared: timings need them beside)."""
    return "load %.2f %.2f %.2f on %d cores" % (*os.getloadavg(), os.cpu_count() or 0)


# ----------------------------------------------------------------------------------------
# coverage benchmark
def coverage_benchmark(args):
    pool, pool_info = build_pool(args.n_pool, 0, args.system)
    elements = pool_info["elements"]
    print(f"pool ({args.system}): {pool_info['n_pool']} structures in {pool_info['seconds']:.1f} s, "
          f"{pool_info['n_rejected']} rejected; atoms/structure {pool_info['atoms_per_structure']}")
    strata = np.array([f"{a.info['seed_index']}:{a.info['mutation']}" for a in pool])
    n_strata = len(set(strata))

    kinds = ["ace"]
    mace_model = None
    if "mace" in args.spaces:
        mace_model = find_mace_model(args.mace_model)
        kinds.append("mace")
    spaces, desc_info = {}, {}
    print(load())
    for kind in kinds:
        X, info = timed_descriptors(kind, pool, mace_model if kind == "mace" else None, elements)
        Z, pipe = pca_space(X, 0.95)
        d5 = cKDTree(Z).query(Z, k=6)[0][:, -1]
        r = (float(np.quantile(d5, 0.5)), float(np.quantile(d5, 0.9)))
        nets = {n: resolution_for(Z, n) for n in args.sizes}
        info.update(pca_dims=int(Z.shape[1]), radius50=r[0], radius90=r[1],
                    r_n={n: nets[n][0] for n in args.sizes}, net_size={n: len(nets[n][1]) for n in args.sizes})
        spaces[kind], desc_info[kind] = (X, Z, r, nets), info
        print(f"{kind}: {info['name']} dim {info['dim']} -> {info['pca_dims']} PCs; "
              f"{info['ms_per_structure']:.2f} ms/structure ({info['us_per_atom']:.0f} us/atom); "
              f"5-NN radii r50 = {r[0]:.3f}, r90 = {r[1]:.3f}; r_N = "
              + ", ".join(f"{nets[n][0]:.3f} (N={n})" for n in args.sizes))

    rows = []
    from pyacemaker_hpc.config import DescriptorCfg

    dcfg = DescriptorCfg()
    for space in kinds:
        X = spaces[space][0]
        for n in args.sizes:
            for objective in ("direct", "maximize_entropy", "random"):
                for seed in args.seeds:
                    sel = make_selector(objective, dcfg)
                    t = time.perf_counter()
                    idx = sel.select(X, n, seed)
                    dt = time.perf_counter() - t
                    row = {"space": space, "n": n, "objective": objective, "seed": seed,
                           "select_s": dt, "strata": int(len(set(strata[idx])))}
                    for ev, (_, Z, r, nets) in spaces.items():
                        rn, net = nets[n]
                        row[f"scov_{ev}"] = space_coverage(Z, idx, rn, net)
                        row[f"pcov_{ev}"] = coverage(Z, idx, rn)
                        row[f"pcov_half_{ev}"] = coverage(Z, idx, 0.5 * rn)
                        row[f"cov50_{ev}"] = coverage(Z, idx, r[0])
                        row[f"cov90_{ev}"] = coverage(Z, idx, r[1])
                        row[f"fcs_{ev}"] = feature_coverage_score(Z, idx)
                        row[f"fill_{ev}"] = fill_distance(Z, idx)
                        row[f"logdet_{ev}"] = EntropySelector().objective_value(Z, idx)
                        row[f"logdet_med_{ev}"] = EntropySelector(bandwidth="median").objective_value(Z, idx)
                    rows.append(row)

    print(f"\nmean over seeds {args.seeds}; strata: of {n_strata} (seed, kind) groups.\n"
          "scov = share of the occupied SPACE within r_N of a pick (r_N: finest radius at which N\n"
          "       points can cover the pool's region; share of an r_N-net of the pool) <- the coverage\n"
          "pcov = share of the pool's POINTS within r_N (density-weighted); pc/2 the same at r_N/2;\n"
          "cov50/cov90 = share of pool points within the 50 %/90 % quantile of the 5-NN distance\n"
          "       (radii far below r_N: near-duplicate counting, rewards sampling the dense families);\n"
          "FCS = DIRECT's per-PC histogram coverage; fill = covering radius (lower is better);\n"
          "ld_med = log det of an RBF kernel at the median pairwise distance; * = same metric\n"
          "in the other descriptor's space (selection made in 'space').")
    other_of = {k: [o for o in kinds if o != k] for k in kinds}
    head = (f"{'space':>5} {'N':>4} {'objective':>16} {'scov':>6} {'pcov':>6} {'pc/2':>6} {'cov50':>6} "
            f"{'cov90':>6} {'FCS':>6} {'fill':>6} {'ld_med':>8}")
    if len(kinds) > 1:
        head += f" | {'scov*':>6} {'FCS*':>6} {'fill*':>6}"
    print(head + f" | {'strata':>6} {'sel s':>6}")
    summary = []
    for space in kinds:
        for n in args.sizes:
            for objective in ("direct", "maximize_entropy", "random"):
                g = [r for r in rows if r["space"] == space and r["n"] == n and r["objective"] == objective]
                m = {k: float(np.mean([r[k] for r in g])) for k in g[0] if k not in ("space", "n", "objective", "seed")}
                sd = {k: float(np.std([r[k] for r in g])) for k in m}
                summary.append({"space": space, "n": n, "objective": objective, "mean": m, "std": sd})
                line = (f"{space:>5} {n:>4} {objective:>16} {m[f'scov_{space}']:6.3f} {m[f'pcov_{space}']:6.3f} "
                        f"{m[f'pcov_half_{space}']:6.3f} {m[f'cov50_{space}']:6.3f} {m[f'cov90_{space}']:6.3f} "
                        f"{m[f'fcs_{space}']:6.3f} {m[f'fill_{space}']:6.2f} {m[f'logdet_med_{space}']:8.1f}")
                for o in other_of[space]:
                    line += f" | {m[f'scov_{o}']:6.3f} {m[f'fcs_{o}']:6.3f} {m[f'fill_{o}']:6.2f}"
                print(line + f" | {m['strata']:6.1f} {m['select_s']:6.3f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "pool": pool_info, "n_strata": n_strata,
                               "descriptors": desc_info, "mace_model": mace_model, "rows": rows,
                               "summary": summary, "load_after": load()}, indent=1))
    print(f"\n{load()}\nwrote {out}")


# ----------------------------------------------------------------------------------------
# descriptor farm: serial vs 1 and 2 worker ranks
def timed_descriptor_task(*args):
    """The pipeline's own ``descriptor_task`` plus this process's CPU and wall seconds, so
    the coordinator sees how much of a core each worker actually got."""
    from pyacemaker_hpc.steps.tasks import descriptor_task

    c, w = time.process_time(), time.perf_counter()
    X = descriptor_task(*args)
    return X, time.process_time() - c, time.perf_counter() - w


def farm_measure(team, kind: str, pool, mace_model, elements, chunk: int) -> dict:
    """Two passes of ``Farm.map`` over the pool in chunks (cold: each worker builds its
    descriptor on its first chunk; warm: built), wall time on rank 0."""
    from pyacemaker_hpc.parallel import Farm, TaskFailed

    farm = Farm(team)
    args = (kind, ("mean", "std"), mace_model if kind == "mace" else None, tuple(elements), "cpu", "float64")
    chunks = [pool[i:i + chunk] for i in range(0, len(pool), chunk)]
    res = {"kind": kind, "n_structures": len(pool), "chunk": chunk, "n_chunks": len(chunks),
           "workers": [r for r in team.groups["descriptor"] if r != 0] or [0]}
    X_out = None
    for phase in ("cold", "warm"):
        out, cpu, wall = {}, [], []

        def on_result(k, r):
            if isinstance(r, TaskFailed):
                raise RuntimeError(r.error)
            out[k] = r[0]
            cpu.append(r[1])
            wall.append(r[2])

        load_before = os.getloadavg()[0]
        t = time.perf_counter()
        farm.map("descriptor", [(k, timed_descriptor_task, (*args, c)) for k, c in enumerate(chunks)],
                 on_result, label=f"{kind} {phase}")
        dt = time.perf_counter() - t
        X_out = np.concatenate([out[k] for k in range(len(chunks))])
        nw = len([w for w in res["workers"] if w != 0]) or 1
        res[phase] = {"seconds": dt, "task_cpu_s": float(np.sum(cpu)), "task_wall_s": float(np.sum(wall)),
                      "cpu_share": float(np.sum(cpu) / max(np.sum(wall), 1e-12)),
                      "utilization": float(np.sum(wall) / (nw * dt)),
                      "load1_before": load_before, "load1_after": os.getloadavg()[0]}
    res["checksum"] = float(np.sum(X_out))
    return res


def farm_rank(args):
    """One rank of ``mpirun -n K direct_sampling.py --farm-rank``: rank 0 maps, others serve."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    from pyacemaker_hpc.parallel import Farm, Team

    team = Team.create({"descriptor": max(1, args.workers)})
    assigned = list(team.groups.get("descriptor", []))
    if not team.serial and len([r for r in assigned if r != 0]) < args.workers:
        # assign_groups keeps the last worker for 'train'; to measure k descriptor
        # workers on k+1 ranks, give the descriptor role every worker rank
        team.groups["descriptor"] = list(range(1, team.size))
    if team.rank != 0:
        Farm(team).serve()
        return
    pool, info = build_pool(args.n_pool, 0, args.system)
    out = {"ranks": team.size, "descriptor_group_from_assign_groups": assigned,
           "descriptor_group_used": team.groups["descriptor"], "results": []}
    try:
        for kind in args.farm_kinds:
            out["results"].append(farm_measure(team, kind, pool, args.mace_model, info["elements"], args.chunk))
    finally:
        Farm(team).shutdown()
    Path(args.farm_out).write_text(json.dumps(out, indent=1))


def farm_benchmark(args):
    """Serial (in-process, the farm's no-MPI path) vs ``mpirun -n 2`` (1 worker) and
    ``mpirun -n 3`` (2 workers); efficiency(2) = T(1 worker) / (2 T(2 workers))."""
    import subprocess

    if "mace" in args.farm_kinds:
        args.mace_model = find_mace_model(args.mace_model)
    mpirun = str(Path(sys.executable).parent / "mpirun")
    runs = []
    print(f"descriptor farm on {args.n_pool} {args.system} structures, chunks of {args.chunk}; "
          f"MACE model {args.mace_model}", flush=True)
    for ranks in args.ranks:
        tmp = Path(tempfile.mkdtemp(prefix="farm_")) / "out.json"
        base = [sys.executable, str(Path(__file__).resolve()), "--farm-rank", "--farm-out", str(tmp),
                "--workers", str(max(1, ranks - 1)), "--n-pool", str(args.n_pool), "--system", args.system,
                "--chunk", str(args.chunk), "--farm-kinds", *args.farm_kinds]
        if args.mace_model:
            base += ["--mace-model", args.mace_model]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        if ranks == 1:
            env["PYACEMAKER_NO_MPI"] = "1"
            cmd = base
        else:
            cmd = [mpirun, "-n", str(ranks), *base]
        l0 = load()
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        rec = json.loads(tmp.read_text())
        rec.update(total_s=time.perf_counter() - t, load_before=l0, load_after=load(),
                   command=" ".join(cmd[:3] if ranks > 1 else cmd[:1]) + " ... --farm-rank")
        runs.append(rec)
        print(f"  {ranks} rank(s): descriptor group {rec['descriptor_group_used']} "
              f"(assign_groups gave {rec['descriptor_group_from_assign_groups']}); {rec['load_before']} -> "
              f"{rec['load_after']}", flush=True)

    print(f"\n{'kind':>5} {'ranks':>5} {'workers':>7} {'cold s':>7} {'warm s':>7} {'ms/str':>7} "
          f"{'vs serial':>9} {'vs 1 wkr':>8} {'eff':>5} {'cpu/wall':>8} {'util':>5} {'eff*':>6} {'load1':>11}")
    table = []
    for kind in args.farm_kinds:
        warm = {}
        for rec in runs:
            r = next(x for x in rec["results"] if x["kind"] == kind)
            warm[rec["ranks"]] = r["warm"]["seconds"]
        serial = warm.get(1)
        one = warm.get(2, serial)
        for rec in runs:
            r = next(x for x in rec["results"] if x["kind"] == kind)
            nw = max(1, rec["ranks"] - 1)
            w = r["warm"]["seconds"]
            row = {"kind": kind, "ranks": rec["ranks"], "workers": nw if rec["ranks"] > 1 else 0,
                   "cold_s": r["cold"]["seconds"], "warm_s": w, "ms_per_structure": 1e3 * w / r["n_structures"],
                   "speedup_vs_serial": (serial / w) if serial else None,
                   "speedup_vs_1_worker": (one / w) if one else None,
                   "efficiency": (one / (nw * w)) if one and rec["ranks"] > 1 else None,
                   "cpu_share": r["warm"]["cpu_share"], "utilization": r["warm"]["utilization"],
                   "full_core_s": w - (r["warm"]["task_wall_s"] - r["warm"]["task_cpu_s"]) / nw,
                   "load1": (r["warm"]["load1_before"], r["warm"]["load1_after"]), "checksum": r["checksum"]}
            table.append(row)
            ref = next((t for t in table if t["kind"] == kind and t["ranks"] == 2), None)
            row["efficiency_full_cores"] = (ref["full_core_s"] / (nw * row["full_core_s"])
                                            if ref is not None and rec["ranks"] > 1 else None)
            f = lambda v, fmt: (fmt % v) if v is not None else "-"  # noqa: E731
            print(f"{kind:>5} {rec['ranks']:>5} {row['workers']:>7} {row['cold_s']:7.2f} {w:7.2f} "
                  f"{row['ms_per_structure']:7.2f} {f(row['speedup_vs_serial'], '%.2f'):>9} "
                  f"{f(row['speedup_vs_1_worker'], '%.2f'):>8} "
                  f"{f(None if row['efficiency'] is None else 100 * row['efficiency'], '%.0f%%'):>5} "
                  f"{row['cpu_share']:8.2f} {row['utilization']:5.2f} "
                  f"{f(None if row['efficiency_full_cores'] is None else 100 * row['efficiency_full_cores'], '%.0f%%'):>6} "
                  f"{row['load1'][0]:5.2f}/{row['load1'][1]:5.2f}")
        sums = {round(t["checksum"], 6) for t in table if t["kind"] == kind}
        if len(sums) != 1:
            print(f"WARNING: {kind} descriptors differ between runs: {sums}")
    print("warm pass (descriptor already built on every worker); 0 workers = serial, rank 0 inline\n"
          "without MPI; eff = T(1 worker) / (k T(k workers)) measured; cpu/wall = CPU seconds the\n"
          "tasks got per wall second (1.0 = a whole core each; below 1 = other processes took the\n"
          "core); util = share of the wall time the workers spent inside tasks (the rest is farm\n"
          "overhead: messages, pickling, polling); eff* = the same efficiency computed from\n"
          "full_core_s = wall time minus the time each worker's tasks spent off-core (task wall -\n"
          "task CPU, per worker): an estimate with the contention removed, farm overhead kept;\n"
          "load1 = 1-minute load average before/after the warm pass.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "runs": runs, "table": table}, indent=1))
    print(f"wrote {out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", choices=sorted(SYSTEMS), default="Cu")
    ap.add_argument("--n-pool", type=int, default=2000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--spaces", nargs="+", choices=["ace", "mace"], default=None,
                    help="descriptor spaces (default: ace and mace for Cu, ace for CuAu)")
    ap.add_argument("--mace-model", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--farm", action="store_true", help="descriptor farm timing instead (serial / mpirun)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    from pyacemaker_hpc.steps.s1_sampling import CHUNK

    ap.add_argument("--chunk", type=int, default=CHUNK, help=f"structures per farm task (step 1's CHUNK, {CHUNK})")
    ap.add_argument("--farm-kinds", nargs="+", default=["ace", "mace"])
    ap.add_argument("--farm-rank", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--farm-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.farm_rank:
        return farm_rank(args)
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ImportError:  # pragma: no cover
        pass
    bench = ROOT / "runs" / "benchmarks"
    if args.farm:
        args.out = args.out or str(bench / f"direct_farm_{args.system}.json")
        return farm_benchmark(args)
    if args.spaces is None:
        args.spaces = ["ace", "mace"] if args.system == "Cu" else ["ace"]
    args.out = args.out or str(bench / ("direct_sampling.json" if args.system == "Cu"
                                        else f"direct_sampling_{args.system}.json"))
    return coverage_benchmark(args)


if __name__ == "__main__":
    main()
