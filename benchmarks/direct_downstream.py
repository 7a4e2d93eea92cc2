"""Downstream test of the selection: does an ACE potential fitted on N structures chosen by
DIRECT / maximum entropy predict held-out structures better than one fitted on N random ones?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/direct_downstream.py \
        [--systems Cu CuAu] [--sizes 25 50 100] [--seeds 0 1 2] [--spaces ace [mace]] \
        [--n-pool 2000] [--n-test 200] [--functions 25] [--iterations 150] [--full-pool] \
        [--out runs/benchmarks/direct_downstream.json]

For each system (Cu: fcc/bcc/hcp; CuAu: fcc Cu, fcc Au, L1_2 Cu3Au and CuAu3, B2 CuAu;
benchmarks/direct_sampling.py SYSTEMS) it builds

* the pool: ``--n-pool`` MutationGenerator candidates (rng seed 0),
* the held-out set: ``--n-test`` candidates of a separate draw from the same generator
  (rng seed 1; any structure also in the pool is dropped),
* the out-of-pool set: the geometries of ``/work/shared/data/dft/Cu_gpaw_pbe_4atom.xyz``
  (150 GPAW-PBE MD/rattle snapshots of fcc Cu, a different generator), *re-labelled with
  EMT*: the test is whether a model trained on the pool transfers to geometries it was
  not drawn from, so it must be compared with the reference it was trained on (against
  the PBE labels the error would be EMT-vs-PBE, the same for every selection),

labels all of them with ASE's EMT (energy, forces), computes the pool's descriptors,
selects N structures with direct / maximize_entropy / random (selection seeds
``--seeds``; random is independent of the descriptor space), fits one pacemaker ACE per
selection with the project's PacemakerTrainer (``--functions`` functions per element,
``--iterations`` BFGS steps, tensorpot, one thread, ZBL core, E0 fixed for every fit: the
least-squares per-element energies of the whole labelled pool, so no fit gets a different
energy scale), and evaluates energy (meV/atom) and force-component (meV/A) RMSE on the
held-out and out-of-pool sets, plus the 95th percentile of the per-structure force RMSE on
the held-out set (the tail: how bad the worst-covered structures are).

Results are written after every fit and reused on a rerun with the same settings
(``--out``), so the benchmark can be interrupted and extended (more seeds, sizes, spaces).
The active set (pace_activeset) is not built: RMSEs do not need it.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from direct_sampling import SYSTEMS, build_pool, find_mace_model, load  # noqa: E402

from pyacemaker_hpc.config import DescriptorCfg, PacemakerCfg  # noqa: E402
from pyacemaker_hpc.core.models import Label, LabelledSet  # noqa: E402
from pyacemaker_hpc.structure_generator.descriptors import make_descriptor  # noqa: E402
from pyacemaker_hpc.structure_generator.direct import make_selector  # noqa: E402
from pyacemaker_hpc.trainer import pacemaker as pm  # noqa: E402

GPAW_XYZ = Path("/work/shared/data/dft/Cu_gpaw_pbe_4atom.xyz")
METHODS = ("direct", "maximize_entropy", "random")


def emt_label(structures) -> LabelledSet:
    from ase.calculators.emt import EMT

    labels = []
    for at in structures:
        a = at.copy()
        a.calc = EMT()
        labels.append(Label(energy=float(a.get_potential_energy()), forces=a.get_forces().copy()))
    return LabelledSet(list(structures), labels)


def errors(pred, ref: LabelledSet) -> dict:
    """RMSEs (pacemaker.rmse) plus the per-structure force RMSE's 95th percentile."""
    out = pm.rmse(pred, ref)
    per = [float(1e3 * np.sqrt(np.mean((np.asarray(p.forces) - np.asarray(r.forces)) ** 2)))
           for p, r in zip(pred, ref.labels)]
    out["f_p95_meV_A"] = float(np.percentile(per, 95))
    return out


def per_kind_force_rmse(pred, ref: LabelledSet) -> dict:
    acc: dict[str, list] = {}
    for at, p, r in zip(ref.structures, pred, ref.labels):
        acc.setdefault(at.info.get("mutation", "?"), []).append(
            (np.asarray(p.forces) - np.asarray(r.forces)).reshape(-1))
    return {k: float(1e3 * np.sqrt(np.mean(np.concatenate(v) ** 2))) for k, v in sorted(acc.items())}


def prepare(system: str, args):
    """Pool, held-out and out-of-pool sets (EMT labelled), E0 and the descriptor matrices."""
    elements = SYSTEMS[system][0]
    pool, pinfo = build_pool(args.n_pool, 0, system)
    test, tinfo = build_pool(args.n_test, 1, system)
    uids = {a.info["uid"] for a in pool}
    n0 = len(test)
    test = [a for a in test if a.info["uid"] not in uids]
    t = time.perf_counter()
    pool_ls, test_ls = emt_label(pool), emt_label(test)
    oop = None
    if GPAW_XYZ.is_file() and set(SYSTEMS[system][0]) >= {"Cu"}:
        from ase.io import read

        gp = read(str(GPAW_XYZ), index=":")
        for a in gp:
            a.info = {"mutation": "gpaw_md"}
            a.calc = None
        oop = emt_label(gp)
    e0 = pm.reference_energies(pool_ls, elements)
    info = {"system": system, "elements": elements, "pool": pinfo, "test": tinfo,
            "n_test": len(test), "test_dropped_in_pool": n0 - len(test),
            "n_out_of_pool": len(oop) if oop else 0, "label_seconds": time.perf_counter() - t, "e0": e0}
    spaces = {}
    for kind in args.spaces:
        if kind == "mace":
            if system != "Cu":
                print(f"  {system}: no MACE space (the MACE model here knows Cu only)")
                continue
            d = make_descriptor("mace", ("mean", "std"), mace_model=args.mace_model, elements=elements)
        else:
            d = make_descriptor("ace", ("mean", "std"), elements=elements)
        t = time.perf_counter()
        spaces[kind] = d.compute_many(pool)
        info[f"descriptor_{kind}"] = {"name": d.name, "dim": int(spaces[kind].shape[1]),
                                      "seconds": time.perf_counter() - t}
    return pool_ls, test_ls, oop, e0, spaces, info


def fit_one(key, train: LabelledSet, e0, test_ls, oop, args, workroot: Path) -> dict:
    trainer = pm.PacemakerTrainer(PacemakerCfg(number_of_functions_per_element=args.functions),
                                  sorted(e0), e0=e0, max_iterations=args.iterations, threads=1,
                                  timeout_s=3600)
    safe = key.replace("/", "_").replace(":", "_")
    wd = workroot / safe
    t = time.perf_counter()
    model = trainer.fit(train, str(wd), name=safe)
    fit_s = time.perf_counter() - t
    pred = pm.predict(model, test_ls.structures, str(wd / "pred"))
    rec = {"fit_s": fit_s, "n_atoms_train": int(sum(len(a) for a in train.structures)),
           "train_rmse_e_meV_atom": model.metrics.get("train_rmse_e_meV_atom"),
           "train_rmse_f_meV_A": model.metrics.get("train_rmse_f_meV_A"),
           "n_functions": model.metrics.get("n_functions"), "iterations": model.metrics.get("iterations"),
           "test": errors(pred, test_ls), "test_by_kind_f": per_kind_force_rmse(pred, test_ls)}
    if oop is not None:
        rec["oop"] = errors(pm.predict(model, oop.structures, str(wd / "pred")), oop)
    if not args.keep_workdirs:
        shutil.rmtree(wd, ignore_errors=True)
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", nargs="+", choices=sorted(SYSTEMS), default=["Cu", "CuAu"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--spaces", nargs="+", choices=["ace", "mace"], default=["ace"],
                    help="descriptor spaces to select in (mace: Cu only)")
    ap.add_argument("--mace-model", default=None)
    ap.add_argument("--n-pool", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--functions", type=int, default=25, help="ACE functions per element")
    ap.add_argument("--iterations", type=int, default=150, help="pacemaker BFGS iterations")
    ap.add_argument("--full-pool", action="store_true", help="also fit on the whole pool (a ceiling)")
    ap.add_argument("--keep-workdirs", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "direct_downstream.json"))
    args = ap.parse_args(argv)
    if "mace" in args.spaces:
        args.mace_model = find_mace_model(args.mace_model)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    pm.build_active_set = lambda *a, **k: None  # RMSEs need no active set (saves ~10 s a fit)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"n_pool": args.n_pool, "n_test": args.n_test, "functions": args.functions,
                "iterations": args.iterations}
    doc = json.loads(out.read_text()) if out.is_file() else {}
    if doc.get("settings") != settings:
        doc = {"settings": settings, "systems": {}, "fits": {}}
    doc["mace_model"] = args.mace_model
    workroot = Path(tempfile.mkdtemp(prefix="direct_downstream_"))
    print(f"{load()}; fits in {workroot}", flush=True)

    for system in args.systems:
        pool_ls, test_ls, oop, e0, spaces, info = prepare(system, args)
        doc["systems"][system] = info
        print(f"{system}: pool {len(pool_ls)}, held-out {len(test_ls)} (dropped {info['test_dropped_in_pool']} "
              f"also in the pool), out-of-pool {info['n_out_of_pool']}; E0 {e0}", flush=True)
        jobs = []
        for n in args.sizes:
            for seed in args.seeds:
                jobs.append((f"{system}/random/{n}/{seed}", "random", "ace", n, seed))
                for space in spaces:
                    for method in ("direct", "maximize_entropy"):
                        jobs.append((f"{system}/{space}:{method}/{n}/{seed}", method, space, n, seed))
        if args.full_pool:
            jobs.append((f"{system}/full_pool/{len(pool_ls)}/0", "full", "ace", len(pool_ls), 0))
        for key, method, space, n, seed in jobs:
            if key in doc["fits"]:
                continue
            if method == "full":
                idx = np.arange(len(pool_ls))
            else:
                idx = np.asarray(make_selector(method, DescriptorCfg()).select(spaces[space], n, seed))
            train = LabelledSet([pool_ls.structures[i] for i in idx], [pool_ls.labels[i] for i in idx])
            l0 = os.getloadavg()[0]
            rec = fit_one(key, train, e0, test_ls, oop, args, workroot)
            rec.update(system=system, method=method, space=space, n=int(n), seed=int(seed),
                       load1=(l0, os.getloadavg()[0]),
                       kinds=sorted({pool_ls.structures[i].info["mutation"] for i in idx}),
                       n_kinds=len({pool_ls.structures[i].info["mutation"] for i in idx}))
            doc["fits"][key] = rec
            out.write_text(json.dumps(doc, indent=1))
            oo = f"; out-of-pool F {rec['oop']['rmse_f_meV_A']:6.1f}" if "oop" in rec else ""
            print(f"  {key:<36} fit {rec['fit_s']:5.1f} s; held-out E {rec['test']['rmse_e_meV_atom']:6.2f} "
                  f"meV/atom, F {rec['test']['rmse_f_meV_A']:6.1f} meV/A{oo}", flush=True)

    doc["summary"] = summarize(doc, args)
    doc["command"] = " ".join(sys.argv)
    out.write_text(json.dumps(doc, indent=1))
    print(f"{load()}\nwrote {out}")
    shutil.rmtree(workroot, ignore_errors=True)


def summarize(doc: dict, args) -> list:
    print("\nmedian [min-max] over the selection seeds (one value: a single fit); E: meV/atom, F: meV/A\n"
          "(force components). held-out: a separate draw from the same generator; F p95: 95th\n"
          "percentile of the per-structure force RMSE on it (median over seeds); out-of-pool: the\n"
          "GPAW-PBE Cu geometries relabelled with EMT; train F: on the N picks (median); the full-pool\n"
          "fit uses the same basis and iteration budget, so it is a reference, not a ceiling.")
    print(f"{'system':>6} {'selection':>22} {'N':>4} | {'held-out E':>17} {'held-out F':>19} {'F p95':>6} | "
          f"{'out-of-pool E':>19} {'out-of-pool F':>21} | {'trainF':>6} {'fit s':>5}")
    groups: dict[tuple, list] = {}
    for rec in doc["fits"].values():
        sel = "random" if rec["method"] == "random" else (
            "full pool" if rec["method"] == "full" else f"{rec['space']}:{rec['method']}")
        groups.setdefault((rec["system"], rec["n"], sel), []).append(rec)
    order = {"random": 0}
    rows = []

    def stat(v):
        v = np.asarray(v, dtype=float)
        return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
                "min": float(v.min()), "max": float(v.max()), "values": v.tolist()}

    def fmt(st, w):
        if len(st["values"]) == 1:
            return f"{st['median']:.1f}".rjust(w)
        return f"{st['median']:.1f} [{st['min']:.0f}-{st['max']:.0f}]".rjust(w)

    for (system, n, sel) in sorted(groups, key=lambda k: (k[0], k[1], order.get(k[2], 1), k[2])):
        g = sorted(groups[(system, n, sel)], key=lambda r: r["seed"])
        row = {"system": system, "n": n, "selection": sel, "seeds": [r["seed"] for r in g],
               "test_e": stat([r["test"]["rmse_e_meV_atom"] for r in g]),
               "test_f": stat([r["test"]["rmse_f_meV_A"] for r in g]),
               "test_f_p95": stat([r["test"]["f_p95_meV_A"] for r in g]),
               "train_f": stat([r["train_rmse_f_meV_A"] for r in g]), "fit_s": stat([r["fit_s"] for r in g]),
               "n_kinds": stat([r["n_kinds"] for r in g])}
        if all("oop" in r for r in g):
            row["oop_e"] = stat([r["oop"]["rmse_e_meV_atom"] for r in g])
            row["oop_f"] = stat([r["oop"]["rmse_f_meV_A"] for r in g])
        rows.append(row)
        oop = f"{fmt(row['oop_e'], 19)} {fmt(row['oop_f'], 21)}" if "oop_e" in row else f"{'-':>19} {'-':>21}"
        print(f"{system:>6} {sel:>22} {n:>4} | {fmt(row['test_e'], 17)} {fmt(row['test_f'], 19)} "
              f"{row['test_f_p95']['median']:6.1f} | {oop} | {row['train_f']['median']:6.1f} "
              f"{row['fit_s']['median']:5.0f}")
    return rows


if __name__ == "__main__":
    main()
