"""Does the MACE committee's spread predict its error, does it pick better DFT structures than
chance, and how fast is batched labelling?  (issue: "MaceSurrogateOracle: uncertainty that
predicts error...", evidence items.)

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/uncertainty.py \
        [--parts corr select throughput] [--epochs 35] [--n-pick 20] [--seeds 0 1 2] \
        [--ace-iterations 100] [--no-ace] [--n-small 1000] [--n-large 1000] \
        [--batch-sizes 8 32 128] [--dtypes float64 float32] \
        [--out runs/benchmarks/uncertainty.json] [--workdir runs/benchmarks/uncertainty_work]

Data: ``/work/shared/data/dft/Cu_gpaw_pbe_4atom.xyz`` (150 GPAW-PBE 4-atom Cu cells; keys
DFT_energy, DFT_forces, DFT_stress): the first 100 are the pool, the last 50 the held-out set
(as in DESIGN). Committee: the three demo foundation members (``pyacemaker_hpc/data/
cu_demo_foundation_s{0,1,2}.model``, trained on GPAW *RPBE* Cu, so they carry a real,
MACE-MP-0-sized RPBE-vs-PBE error; the README's figures predate it: LDA members).

* ``corr``: Spearman rank correlation between the committee spread (``MaceCommittee.
  uncertainty``: force_std, energy_std) and the first member's actual error against PBE DFT
  (per structure: max over atoms of |F_pred - F_dft|, RMS force-component error, |energy
  error per atom| after removing the mean per-atom offset of the set), over all 150 and over
  the 50 held-out; as a model-free baseline the same correlation for the first member's
  max predicted |F| (how distorted the cell looks). Then the same on the 50 held-out for a
  fine-tuned committee: s0 fine-tuned (mace naive, E0s estimated, ``--epochs``) on 20 random
  pool labels (random pick seed 0) with three training seeds.
* ``select``: N = ``--n-pick`` structures from the pool picked by committee force_std (the
  step-2 quantile rule, ``pick_uncertain``) vs uniformly at random (``--seeds``); s0
  fine-tuned on the picked PBE labels (same settings; the uncertainty pick with every
  training seed, each random pick with training seed 0 -- random pick 0 also with the other
  training seeds, which gives the training-seed noise on the same data); held-out force and
  energy RMSE. With ACE (unless ``--no-ace``): a small pacemaker ACE (preset small,
  ``--ace-iterations`` BFGS steps) fitted on the same picked DFT labels only.
* ``throughput``: ``--n-small`` 4-atom and ``--n-large`` 32-atom rattled/strained fcc Cu cells
  labelled with ``MaceCommittee.label_batch`` (several batch sizes) vs one ``MACECalculator``
  call per structure (energy, forces, stress), demo foundation s0, float64 and float32,
  with ``--threads`` torch intra-op threads given to both paths (a MACE rank's cores);
  structures/s, the ratio and the largest difference between the two. Plus a profile of
  label_batch: graph building (config -> AtomicData), collation, model call (forward +
  autograd forces/stress), everything else.

Fine-tuned models are kept under ``--workdir`` and reused on a rerun (delete it to retrain).
Results go to ``--out`` (JSON) and are printed as tables.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyacemaker_hpc.core.models import Label, LabelledSet  # noqa: E402

DATA = Path("/work/shared/data/dft/Cu_gpaw_pbe_4atom.xyz")
MODELS = [str(ROOT / f"pyacemaker_hpc/data/cu_demo_foundation_s{k}.model") for k in range(3)]
N_POOL = 100


# ----------------------------------------------------------------------------------------
def load_dft() -> LabelledSet:
    from ase.io import read

    structs, labels = [], []
    for at in read(DATA, ":"):
        e = float(at.info["DFT_energy"])
        f = np.array(at.arrays["DFT_forces"], dtype=float)
        s = np.array(at.info["DFT_stress"], dtype=float) if "DFT_stress" in at.info else None
        a = at.copy()
        a.calc = None
        for k in ("DFT_forces",):
            a.arrays.pop(k, None)
        a.info = {}
        structs.append(a)
        labels.append(Label(energy=e, forces=f, stress=s))
    return LabelledSet(structs, labels)


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def errors(pred_e, pred_f, ls: LabelledSet) -> dict[str, np.ndarray]:
    """Per-structure errors of one model: max atom force error, RMS force component error,
    |energy error per atom| after removing the set's mean per-atom offset."""
    nat = np.array([len(a) for a in ls.structures], dtype=float)
    de = (np.asarray(pred_e) - np.array([lab.energy for lab in ls.labels])) / nat
    de = de - de.mean()
    fmax, frms = [], []
    for f, lab in zip(pred_f, ls.labels):
        d = np.asarray(f) - lab.forces
        fmax.append(float(np.linalg.norm(d, axis=1).max()))
        frms.append(float(np.sqrt(np.mean(d ** 2))))
    return {"max_force_err": np.array(fmax), "rms_force_err": np.array(frms), "abs_energy_err": np.abs(de)}


def rmse_set(pred_e, pred_f, ls: LabelledSet) -> dict[str, float]:
    nat = np.array([len(a) for a in ls.structures], dtype=float)
    de = (np.asarray(pred_e) - np.array([lab.energy for lab in ls.labels])) / nat
    df = np.concatenate([(np.asarray(f) - lab.forces).ravel() for f, lab in zip(pred_f, ls.labels)])
    return {"rmse_e_meV_atom": float(1e3 * np.sqrt(np.mean(de ** 2))),
            "rmse_e_offset_removed_meV_atom": float(1e3 * np.std(de)),
            "rmse_f_meV_A": float(1e3 * np.sqrt(np.mean(df ** 2)))}


def correlations(committee, ls: LabelledSet, idx) -> dict:
    sub = LabelledSet([ls.structures[i] for i in idx], [ls.labels[i] for i in idx])
    energies, forces, _ = committee.predict_all(sub.structures)
    unc = committee.uncertainty(sub.structures)
    err = errors(energies[0], forces[0], sub)
    fmag = np.array([float(np.linalg.norm(f, axis=1).max()) for f in forces[0]])
    out = {"n": len(idx),
           "force_std_vs_max_force_err": spearman(unc.force_std, err["max_force_err"]),
           "force_std_vs_rms_force_err": spearman(unc.force_std, err["rms_force_err"]),
           "energy_std_vs_abs_energy_err": spearman(unc.energy_std, err["abs_energy_err"]),
           "force_std_vs_abs_energy_err": spearman(unc.force_std, err["abs_energy_err"]),
           "baseline_max_pred_force_vs_max_force_err": spearman(fmag, err["max_force_err"]),
           "baseline_max_pred_force_vs_rms_force_err": spearman(fmag, err["rms_force_err"]),
           "median_force_std_eV_A": float(np.median(unc.force_std)),
           "median_max_force_err_eV_A": float(np.median(err["max_force_err"])),
           **rmse_set(energies[0], forces[0], sub)}
    return out


# ----------------------------------------------------------------------------------------
def finetune(train: LabelledSet, workdir: Path, seed: int, epochs: int) -> str:
    """s0 fine-tuned on ``train`` (naive, E0s estimated); the .model path (reused if there)."""
    from pyacemaker_hpc.config import FinetuneCfg
    from pyacemaker_hpc.trainer.mace_finetune import MaceFinetuner

    path = workdir / "model.model"
    meta = workdir / "metrics.json"
    if path.is_file() and meta.is_file():
        return str(path)
    cfg = FinetuneCfg(method="naive", e0s="estimated", seed=seed)
    t = time.time()
    model = MaceFinetuner(MODELS[0], epochs, cfg, device="cpu", default_dtype="float64",
                          seed=seed).fit(train, workdir, name="ft")
    path.write_bytes(model.files[".model"])
    meta.write_text(json.dumps({**model.metrics, "wall_s": time.time() - t}, indent=1))
    print(f"  fine-tuned {workdir.name}: {time.time() - t:.0f} s", flush=True)
    return str(path)


def fit_ace(train: LabelledSet, test: LabelledSet, workdir: Path, iterations: int) -> dict:
    from pyacemaker_hpc.config import PacemakerCfg
    from pyacemaker_hpc.trainer import pacemaker as pm

    res_file = workdir / "result.json"
    if res_file.is_file():
        return json.loads(res_file.read_text())
    t = time.time()
    tr = pm.PacemakerTrainer(PacemakerCfg(preset="small"), ["Cu"], max_iterations=iterations,
                             threads=1)
    model = tr.fit(train, str(workdir), name="ace")
    res = pm.rmse(pm.predict(model, test.structures, str(workdir / "eval_test")), test)
    res.update({k: v for k, v in model.metrics.items() if k.startswith("train_rmse")})
    res["wall_s"] = time.time() - t
    res_file.write_text(json.dumps(res, indent=1))
    print(f"  ACE {workdir.name}: {res['wall_s']:.0f} s", flush=True)
    return res


def subset(ls: LabelledSet, idx) -> LabelledSet:
    return LabelledSet([ls.structures[i] for i in idx], [ls.labels[i] for i in idx])


def eval_model(path: str, test: LabelledSet) -> dict:
    from pyacemaker_hpc.oracle.mace_surrogate import MaceCommittee

    c = MaceCommittee([path])
    e, f, _ = c.predict_all(test.structures)
    return rmse_set(e[0], f[0], test)


# ----------------------------------------------------------------------------------------
def part_corr(args, ls, res):
    from pyacemaker_hpc.oracle.mace_surrogate import MaceCommittee

    comm = MaceCommittee(MODELS)
    res["corr_foundation"] = {"all_150": correlations(comm, ls, range(len(ls))),
                              "heldout_50": correlations(comm, ls, range(N_POOL, len(ls)))}
    pick = random_pick(0, args.n_pick)
    paths = [finetune(subset(ls, pick), Path(args.workdir) / f"random0_ft{s}", s, args.epochs)
             for s in args.seeds]
    ft = MaceCommittee(paths)
    res["corr_finetuned"] = {"heldout_50": correlations(ft, ls, range(N_POOL, len(ls))),
                             "train": f"{args.n_pick} random pool labels (pick seed 0)",
                             "training_seeds": list(args.seeds)}


def random_pick(seed: int, n: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(N_POOL, size=n, replace=False))


def part_select(args, ls, res):
    from pyacemaker_hpc.oracle.mace_surrogate import MaceCommittee
    from pyacemaker_hpc.steps.s2_active_learning import pick_uncertain

    pool = subset(ls, range(N_POOL))
    test = subset(ls, range(N_POOL, len(ls)))
    comm = MaceCommittee(MODELS)
    unc = comm.uncertainty(pool.structures)
    thr = 1.0 - args.n_pick / N_POOL
    unc_idx = np.sort(pick_uncertain(unc, thr))
    e, f, _ = comm.predict_all(pool.structures)
    err = errors(e[0], f[0], pool)
    dft_fmax = np.array([float(np.linalg.norm(lab.forces, axis=1).max()) for lab in pool.labels])
    picks = {"uncertainty": unc_idx, **{f"random{s}": random_pick(s, args.n_pick) for s in args.seeds}}
    out = {"n_pick": args.n_pick, "threshold_quantile": thr, "picks": {}, "mace": {}, "ace": {}}
    for name, idx in picks.items():
        out["picks"][name] = {
            "indices": [int(i) for i in idx],
            "mean_force_std_eV_A": float(unc.force_std[idx].mean()),
            "mean_dft_max_force_eV_A": float(dft_fmax[idx].mean()),
            "mean_foundation_max_force_err_eV_A": float(err["max_force_err"][idx].mean())}
    out["pool_mean_dft_max_force_eV_A"] = float(dft_fmax.mean())
    out["pool_mean_foundation_max_force_err_eV_A"] = float(err["max_force_err"].mean())
    out["foundation_s0_heldout"] = eval_model(MODELS[0], test)
    # training runs: uncertainty x every seed, random pick s x seed 0, random0 x every seed
    runs = [("uncertainty", s) for s in args.seeds] + [(f"random{p}", args.seeds[0]) for p in args.seeds]
    runs += [(f"random{args.seeds[0]}", s) for s in args.seeds[1:]]
    for name, s in runs:
        wd = Path(args.workdir) / f"{name}_ft{s}"
        path = finetune(subset(pool, picks[name]), wd, s, args.epochs)
        r = eval_model(path, test)
        r["fit_seconds"] = json.loads((wd / "metrics.json").read_text()).get("wall_s")
        out["mace"][f"{name}/ft{s}"] = r
        res["select"] = out
        save(args, res)
    if not args.no_ace:
        for name, idx in picks.items():
            out["ace"][name] = fit_ace(subset(pool, idx), test, Path(args.workdir) / f"ace_{name}",
                                       args.ace_iterations)
            res["select"] = out
            save(args, res)
    res["select"] = out


# ----------------------------------------------------------------------------------------
def cells(n: int, rep: int, seed: int):
    """n rattled (0.1 A) and randomly strained (+-3 %) fcc Cu cells of 4 * rep**3 atoms."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((rep, rep, rep))
        eps = rng.uniform(-0.03, 0.03, size=(3, 3))
        a.set_cell(np.asarray(a.cell) @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        a.positions += rng.normal(0.0, 0.1, size=a.positions.shape)
        out.append(a)
    return out


def profile_label_batch(comm, structs) -> dict:
    """Wall time of label_batch split into graph building, collation, model call, rest."""
    import mace.modules.models as mm
    import mace.tools.torch_geometric.batch as tb

    import pyacemaker_hpc.oracle.mace_surrogate as ms

    acc = {"graphs_s": 0.0, "collate_s": 0.0, "model_s": 0.0}

    def timed(fn, key):
        def wrap(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[key] += time.perf_counter() - t
        return wrap

    model = comm.models[0]
    orig_graphs, orig_collate = ms.MaceCommittee._graphs, tb.Batch.from_data_list
    orig_fwd = type(model).forward
    ms.MaceCommittee._graphs = timed(orig_graphs, "graphs_s")
    tb.Batch.from_data_list = classmethod(timed(orig_collate.__func__, "collate_s"))
    type(model).forward = timed(orig_fwd, "model_s")
    try:
        t = time.perf_counter()
        comm.label_batch(structs)
        total = time.perf_counter() - t
    finally:
        ms.MaceCommittee._graphs = orig_graphs
        tb.Batch.from_data_list = orig_collate
        type(model).forward = orig_fwd
    acc = {k: round(v, 3) for k, v in acc.items()}
    acc["total_s"] = round(total, 3)
    acc["other_s"] = round(total - sum(v for k, v in acc.items() if k != "total_s"), 3)
    acc["ms_per_structure"] = round(1e3 * total / len(structs), 3)
    _ = mm
    return acc


def part_throughput(args, res):
    import torch

    from pyacemaker_hpc.oracle.mace_surrogate import MaceCommittee, torch_dtype

    out = {"threads": args.threads, "rows": []}
    for threads, (n_at, n, rep) in [(t, c) for t in args.threads
                                    for c in ((4, args.n_small, 1), (32, args.n_large, 2))]:
        if n <= 0:
            continue
        # both paths get the same intra-op threads: a MACE rank's cores (--cpus-per-task)
        torch.set_num_threads(threads)
        structs = cells(n, rep, seed=n_at)
        ref64 = None  # float64 calculator labels: what float32 labels are compared with
        for dtype in args.dtypes:
            comm = MaceCommittee([MODELS[0]], default_dtype=dtype, batch_size=max(args.batch_sizes))
            calc = comm.calculator()
            comm.label_batch(structs[:8])  # warm-up
            # one MACECalculator call per structure (energy, forces and stress in one call)
            t = time.perf_counter()
            ref = []
            with torch_dtype(dtype):
                for a in structs:
                    b = a.copy()
                    b.calc = calc
                    e = b.get_potential_energy()
                    ref.append((e, b.get_forces().copy(), b.get_stress(voigt=True).copy()))
            t_calc = time.perf_counter() - t
            row_base = {"threads": threads, "atoms": n_at, "n": n, "dtype": dtype,
                        "calculator_structs_per_s": round(n / t_calc, 1)}
            if dtype == "float64":
                ref64 = ref
            elif ref64 is not None:  # precision cost of float32 labels (step 5's default)
                row_base["vs_float64_max_dE_meV_atom"] = 1e3 * max(abs(r[0] - q[0]) / n_at for r, q in zip(ref, ref64))
                row_base["vs_float64_max_dF_meV_A"] = 1e3 * max(float(np.abs(r[1] - q[1]).max())
                                                               for r, q in zip(ref, ref64))
            cap = comm.max_batch_atoms
            for bs, mba in [(b, m) for b in args.batch_sizes
                            for m in ((cap, 0) if cap and b * n_at > cap else (cap,))]:
                comm.batch_size, comm.max_batch_atoms = bs, mba
                t = time.perf_counter()
                labs = comm.label_batch(structs)
                t_b = time.perf_counter() - t
                de = max(abs(lab.energy - r[0]) for lab, r in zip(labs, ref))
                df = max(float(np.abs(lab.forces - r[1]).max()) for lab, r in zip(labs, ref))
                ds = max(float(np.abs(lab.stress - r[2]).max()) for lab, r in zip(labs, ref))
                row = {**row_base, "batch_size": bs, "max_batch_atoms": mba, "label_batch_structs_per_s": round(n / t_b, 1),
                       "ratio": round(t_calc / t_b, 2), "max_abs_dE_eV": de, "max_abs_dF_eV_A": df,
                       "max_abs_dS_eV_A3": ds}
                out["rows"].append(row)
                print(f"  {threads} thr {n_at:3d} at {dtype} bs={bs:4d} cap={mba:4d}: calc {row['calculator_structs_per_s']:7.1f}/s"
                      f"  batch {row['label_batch_structs_per_s']:7.1f}/s  x{row['ratio']:.2f}", flush=True)
            comm.batch_size, comm.max_batch_atoms = 32, cap
            out.setdefault("profile", []).append({"threads": threads, "atoms": n_at, "dtype": dtype, "batch_size": 32,
                                                  "max_batch_atoms": cap,
                                                  **profile_label_batch(comm, structs[:min(n, 300)])})
            res["throughput"] = out
            save(args, res)
    res["throughput"] = out


# ----------------------------------------------------------------------------------------
def save(args, res):
    p = Path(args.out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(res, indent=1))


def report(res):
    if "corr_foundation" in res:
        print("\n== 1. Spearman rho: committee spread vs first member's error vs PBE DFT ==")
        keys = ["force_std_vs_max_force_err", "force_std_vs_rms_force_err",
                "energy_std_vs_abs_energy_err", "force_std_vs_abs_energy_err",
                "baseline_max_pred_force_vs_max_force_err", "baseline_max_pred_force_vs_rms_force_err"]
        sets = [("foundation, all 150", res["corr_foundation"]["all_150"]),
                ("foundation, held-out 50", res["corr_foundation"]["heldout_50"])]
        if "corr_finetuned" in res:
            sets.append(("fine-tuned, held-out 50", res["corr_finetuned"]["heldout_50"]))
        print(f"{'':45s}" + "".join(f"{s[0]:>26s}" for s in sets))
        for k in keys:
            print(f"{k:45s}" + "".join(f"{s[1][k]:26.3f}" for s in sets))
        for k in ("median_force_std_eV_A", "median_max_force_err_eV_A", "rmse_f_meV_A",
                  "rmse_e_offset_removed_meV_atom"):
            print(f"{k:45s}" + "".join(f"{s[1][k]:26.3f}" for s in sets))
    if "select" in res:
        s = res["select"]
        print(f"\n== 2. uncertainty vs random pick, N={s['n_pick']} of {N_POOL}; held-out 50 PBE ==")
        print(f"foundation s0 (no fine-tuning): F {s['foundation_s0_heldout']['rmse_f_meV_A']:.1f} meV/A, "
              f"E {s['foundation_s0_heldout']['rmse_e_meV_atom']:.1f} meV/atom "
              f"({s['foundation_s0_heldout']['rmse_e_offset_removed_meV_atom']:.1f} offset removed)")
        print(f"{'pick':14s}{'<force_std>':>12s}{'<DFT max|F|>':>14s}{'<fnd maxFerr>':>14s}  (eV/A; pool mean "
              f"DFT max|F| {s['pool_mean_dft_max_force_eV_A']:.2f}, fnd err "
              f"{s['pool_mean_foundation_max_force_err_eV_A']:.2f})")
        for name, p in s["picks"].items():
            print(f"{name:14s}{p['mean_force_std_eV_A']:12.3f}{p['mean_dft_max_force_eV_A']:14.2f}"
                  f"{p['mean_foundation_max_force_err_eV_A']:14.2f}")
        print(f"{'MACE fine-tune':22s}{'F RMSE meV/A':>14s}{'E RMSE meV/at':>15s}{'E (offset rm)':>15s}")
        for name, r in s["mace"].items():
            print(f"{name:22s}{r['rmse_f_meV_A']:14.1f}{r['rmse_e_meV_atom']:15.1f}"
                  f"{r['rmse_e_offset_removed_meV_atom']:15.1f}")
        for lab, keys in (("uncertainty", [k for k in s["mace"] if k.startswith("uncertainty/")]),
                          ("random (3 picks)", [k for k in s["mace"] if k.startswith("random")
                                                and k.endswith("/ft0")])):
            if keys:
                f = [s["mace"][k]["rmse_f_meV_A"] for k in keys]
                e = [s["mace"][k]["rmse_e_meV_atom"] for k in keys]
                print(f"  mean {lab:18s} F {np.mean(f):6.1f} +- {np.std(f):5.1f}   E {np.mean(e):6.1f} +- "
                      f"{np.std(e):5.1f}  (n={len(keys)})")
        if s.get("ace"):
            print(f"{'ACE (DFT only)':22s}{'F RMSE meV/A':>14s}{'E RMSE meV/at':>15s}")
            for name, r in s["ace"].items():
                print(f"{name:22s}{r['rmse_f_meV_A']:14.1f}{r['rmse_e_meV_atom']:15.1f}")
    if "throughput" in res:
        t = res["throughput"]
        print("\n== 3. labelling throughput (CPU; both paths get the same torch threads), structures/s ==")
        print(f"{'thr':>3s}{'atoms':>6s}{'n':>6s}{'dtype':>9s}{'batch':>6s}{'atomcap':>8s}{'calculator':>12s}"
              f"{'label_batch':>13s}{'ratio':>7s}{'max|dF|':>10s}")
        for r in t["rows"]:
            cap = r.get("max_batch_atoms")
            print(f"{r.get('threads', t['threads']):>3}{r['atoms']:6d}{r['n']:6d}{r['dtype']:>9s}{r['batch_size']:6d}"
                  f"{(str(cap) if cap else 'none'):>8s}"
                  f"{r['calculator_structs_per_s']:12.1f}{r['label_batch_structs_per_s']:13.1f}"
                  f"{r['ratio']:7.2f}{r['max_abs_dF_eV_A']:10.1e}")
        for r in t["rows"]:
            if "vs_float64_max_dE_meV_atom" in r:
                print(f"  {r['atoms']}-atom float32 labels vs float64: max |dE| "
                      f"{r['vs_float64_max_dE_meV_atom']:.1e} meV/atom, max |dF| {r['vs_float64_max_dF_meV_A']:.1e} meV/A")
                break
        calc64 = {(r.get("threads"), r["atoms"]): r["calculator_structs_per_s"]
                  for r in t["rows"] if r["dtype"] == "float64"}
        for r in t["rows"]:  # step 5 as configured: float32, batch 32, 128-atom cap on CPU
            key = (r.get("threads"), r["atoms"])
            if r["dtype"] == "float32" and r["batch_size"] == 32 and r.get("max_batch_atoms") == 128 \
                    and key in calc64:
                print(f"  step 5 default (float32, batch 32) vs a float64 MACECalculator loop, "
                      f"{r['atoms']}-atom cells, {key[0]} thread(s): "
                      f"{r['label_batch_structs_per_s'] / calc64[key]:.1f}x")
        for p in t.get("profile", []):
            print(f"  profile {p.get('threads', t['threads'])} thr {p['atoms']} at {p['dtype']} bs={p['batch_size']} cap={p.get('max_batch_atoms')}: {p['ms_per_structure']} "
                  f"ms/struct; graphs {p['graphs_s']} s, collate {p['collate_s']} s, model "
                  f"{p['model_s']} s, other {p['other_s']} s of {p['total_s']} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["corr", "select", "throughput"],
                    choices=["corr", "select", "throughput"])
    ap.add_argument("--epochs", type=int, default=35)
    ap.add_argument("--n-pick", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ace-iterations", type=int, default=100)
    ap.add_argument("--no-ace", action="store_true")
    ap.add_argument("--n-small", type=int, default=1000)
    ap.add_argument("--n-large", type=int, default=1000)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="torch intra-op threads, given to both the calculator loop and label_batch")
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    ap.add_argument("--out", default=str(ROOT / "runs/benchmarks/uncertainty.json"))
    ap.add_argument("--workdir", default=str(ROOT / "runs/benchmarks/uncertainty_work"))
    ap.add_argument("--report-only", action="store_true", help="print the tables of --out")
    args = ap.parse_args(argv)
    p = Path(args.out)
    res = json.loads(p.read_text()) if p.is_file() else {}
    if args.report_only:
        report(res)
        return res
    res["settings"] = {k: v for k, v in vars(args).items() if k != "report_only"}
    ls = load_dft()
    t0 = time.time()
    if "throughput" in args.parts:
        part_throughput(args, res)
        save(args, res)
    if "corr" in args.parts:
        part_corr(args, ls, res)
        save(args, res)
    if "select" in args.parts:
        part_select(args, ls, res)
        save(args, res)
    res["wall_s"] = round(time.time() - t0, 1)
    save(args, res)
    report(res)
    return res


if __name__ == "__main__":
    main()
