"""Does DIRECT / maximum-entropy selection cover the structure space better than random?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/direct_sampling.py \
        [--n-pool 2000] [--sizes 50 100] [--seeds 0 1 2] [--mace-model PATH] \
        [--out runs/benchmarks/direct_sampling.json]

Builds a real pool of Cu candidates (MutationGenerator on fcc/bcc/hcp prototypes),
computes ACE B-basis and MACE invariant descriptors (MACE: --mace-model, else the demo
foundation in pyacemaker_hpc/data/*.model, else a tiny MACE trained here the tests' way),
selects N structures with direct / maximize_entropy / random over several seeds, and
reports, in the space the selection was made in and in the other descriptor's space:

* cov50/cov90 - fraction of the pool within radius r of a selected structure (density-
              weighted), r = 50 % / 90 % quantile of the distance from a pool point to its
              5th nearest neighbour;
* FCS       - DIRECT's feature coverage score: share of occupied 100-bin histogram cells
              per PC that the selection reaches (extent, density-blind);
* fill      - largest distance from a pool point to the selection (covering radius);
* logdet    - the entropy objective (RBF log det, bandwidth as EntropySelector uses; it
              saturates at 0 when all picks are many bandwidths apart) and logdet_med
              (bandwidth = median pairwise distance: never saturated, comparable);
* strata    - how many (seed prototype, mutation kind) groups the selection touches;
* timing    - descriptor ms per structure and selection seconds.
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


def build_pool(n_pool: int, seed: int = 0):
    system = SystemCfg(elements=["Cu"], prototypes=[Prototype(element="Cu", structure=s)
                                                    for s in ("fcc", "bcc", "hcp")])
    cfg = GeneratorCfg(n_candidates=n_pool, supercells=[[1, 1, 1], [2, 1, 1], [2, 2, 2]])
    gen = MutationGenerator(cfg, system.elements)
    t = time.perf_counter()
    pool = gen.generate(prototype_structures(system), np.random.default_rng(seed))
    info = {"n_pool": len(pool), "seconds": time.perf_counter() - t, "n_rejected": gen.n_rejected,
            "rejected_by_kind": dict(gen.rejected_by_kind), "kinds": dict(gen.generated_by_kind),
            "atoms_per_structure": dict(Counter(len(a) for a in pool))}
    return pool, info


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


def timed_descriptors(kind: str, pool, mace_model: str | None):
    d = make_descriptor(kind, ("mean", "std"), mace_model=mace_model, elements=["Cu"])
    d.compute(pool[0])  # warm-up (model load, first graph)
    t = time.perf_counter()
    X = d.compute_many(pool)
    dt = time.perf_counter() - t
    n_atoms = sum(len(a) for a in pool)
    return X, {"name": d.name, "dim": int(X.shape[1]), "ms_per_structure": 1e3 * dt / len(pool),
               "us_per_atom": 1e6 * dt / n_atoms, "seconds": dt}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-pool", type=int, default=2000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 100])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--mace-model", default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "direct_sampling.json"))
    args = ap.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ImportError:  # pragma: no cover
        pass

    pool, pool_info = build_pool(args.n_pool)
    print(f"pool: {pool_info['n_pool']} structures in {pool_info['seconds']:.1f} s, "
          f"{pool_info['n_rejected']} rejected; atoms/structure {pool_info['atoms_per_structure']}")
    strata = np.array([f"{a.info['seed_index']}:{a.info['mutation']}" for a in pool])
    n_strata = len(set(strata))

    mace_model = find_mace_model(args.mace_model)
    spaces, desc_info = {}, {}
    for kind in ("ace", "mace"):
        X, info = timed_descriptors(kind, pool, mace_model if kind == "mace" else None)
        Z, pipe = pca_space(X, 0.95)
        d5 = cKDTree(Z).query(Z, k=6)[0][:, -1]
        r = (float(np.quantile(d5, 0.5)), float(np.quantile(d5, 0.9)))
        info.update(pca_dims=int(Z.shape[1]), radius50=r[0], radius90=r[1])
        spaces[kind], desc_info[kind] = (X, Z, r), info
        print(f"{kind}: {info['name']} dim {info['dim']} -> {info['pca_dims']} PCs; "
              f"{info['ms_per_structure']:.2f} ms/structure ({info['us_per_atom']:.0f} us/atom); "
              f"r50 = {r[0]:.3f}, r90 = {r[1]:.3f}")

    rows = []
    from pyacemaker_hpc.config import DescriptorCfg

    dcfg = DescriptorCfg()
    for space in ("ace", "mace"):
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
                    for ev, (_, Z, r) in spaces.items():
                        row[f"cov50_{ev}"] = coverage(Z, idx, r[0])
                        row[f"cov90_{ev}"] = coverage(Z, idx, r[1])
                        row[f"fcs_{ev}"] = feature_coverage_score(Z, idx)
                        row[f"fill_{ev}"] = fill_distance(Z, idx)
                        row[f"logdet_{ev}"] = EntropySelector().objective_value(Z, idx)
                        row[f"logdet_med_{ev}"] = EntropySelector(bandwidth="median").objective_value(Z, idx)
                    rows.append(row)

    print(f"\nmean over seeds {args.seeds}; strata: of {n_strata} (seed, kind) groups; metrics in the "
          "space the selection was made in, then FCS/fill in the other descriptor's space")
    print(f"{'space':>5} {'N':>4} {'objective':>16} {'cov50':>6} {'cov90':>6} {'FCS':>6} {'fill':>6} "
          f"{'logdet':>8} {'ld_med':>8} | {'FCS*':>6} {'fill*':>6} | {'strata':>6} {'sel s':>6}")
    summary = []
    for space in ("ace", "mace"):
        other = "mace" if space == "ace" else "ace"
        for n in args.sizes:
            for objective in ("direct", "maximize_entropy", "random"):
                g = [r for r in rows if r["space"] == space and r["n"] == n and r["objective"] == objective]
                m = {k: float(np.mean([r[k] for r in g])) for k in g[0] if k not in ("space", "n", "objective", "seed")}
                sd = {k: float(np.std([r[k] for r in g])) for k in m}
                summary.append({"space": space, "n": n, "objective": objective, "mean": m, "std": sd})
                print(f"{space:>5} {n:>4} {objective:>16} {m[f'cov50_{space}']:6.3f} {m[f'cov90_{space}']:6.3f} "
                      f"{m[f'fcs_{space}']:6.3f} {m[f'fill_{space}']:6.2f} {m[f'logdet_{space}']:8.1f} {m[f'logdet_med_{space}']:8.1f} | "
                      f"{m[f'fcs_{other}']:6.3f} {m[f'fill_{other}']:6.2f} | {m['strata']:6.1f} {m['select_s']:6.3f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"pool": pool_info, "n_strata": n_strata, "descriptors": desc_info,
                               "mace_model": mace_model, "rows": rows, "summary": summary}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
