"""What distillation buys at run time: ACE vs MACE inference cost, MACE labelling throughput,
and the wall time of each pipeline step.

    OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python benchmarks/speed.py [--quick] \
        [--parts md label steps] [--sizes 32 108 256] [--threads 1 2] [--warmup 3] [--budget-s 30] \
        [--min-steps 3] [--max-steps 500] [--presets small medium large] [--ace-iterations 10] [--no-mp0] \
        [--n-small 1000] [--n-large 1000] [--batch-sizes 8 32 128] [--dtypes float64 float32] \
        [--campaign runs/quickstart/campaign.h5] [--out runs/benchmarks/speed.json] \
        [--workdir runs/benchmarks/speed_work]

``--quick``: 32- and 108-atom cells, 2 warm-up steps, a 10 s budget per measurement, 200
small + 100 large cells for labelling at one batch size (about 4-5 minutes).

What is measured, on CPU (a GPU would change every MACE figure; ACE runs on CPU anyway):

* ``md``: cost of one ASE MD step (VelocityVerlet, 1 fs, 300 K start, after ``--warmup``
  untimed steps) in microseconds per atom per step, on the same slightly rattled (0.05 A)
  fcc Cu supercells of 32, 108 and 256 atoms, for
  - the quickstart's teacher, the demo foundation MACE (``cu_demo_foundation_s0.model``,
    16x0e+16x1o), float64 and float32;
  - a MACE of MACE-MP-0-medium size with random weights built here (mace's
    ``ScaleShiftMACE`` as ``mace_run_train`` builds it: 128x0e+128x1o hidden irreps, 2
    interactions, r_max 6 A, max_L 1, max_ell 3, correlation 3, 8 radial functions, 89
    elements), float64 and float32: inference cost depends on the architecture, not on the
    weights, and MACE-MP-0 itself cannot be downloaded here;
  - ACE potentials of the pipeline's presets (small / medium / large: 30 / 100 / 300
    functions per element) through pyace's ``PyACECalculator``, fitted by a real short
    pacemaker run (``PacemakerTrainer``, ``--ace-iterations`` BFGS steps, on 20 EMT-labelled
    4-atom Cu cells: an ACE's cost depends on its basis, not its coefficients), plus the
    quickstart's own ``results/potential.yace`` when it exists.
  Each calculator runs as many timed steps as the warm-up says fit in ``--budget-s``
  (between ``--min-steps`` and ``--max-steps``). Both the wall time and this process's CPU
  time are recorded: at one thread the CPU time is the cost free of whatever else runs on
  the machine, so the MACE/ACE cost ratio (the reason to distil) is taken from it. With
  ``--threads 1 2`` every MACE is timed at each torch thread count (pyace evaluates on one
  thread); there the wall time is the figure, on a machine with cores to spare.
* ``label``: structures/s of ``MaceCommittee.label_batch`` (step 5's batched path) against
  one ``MACECalculator`` call per structure, demo foundation, float64 and float32, on
  4-atom and 32-atom cells: the throughput part of ``benchmarks/uncertainty.py``, imported.
* ``steps``: wall seconds of each step of an existing campaign (``--campaign``; the
  quickstart's by default), read from ``/steps/<step>`` attrs. Nothing is re-run.

Everything goes to ``--out`` (JSON) and is printed. Models built here are kept under
``--workdir`` and reused on a rerun (delete it to rebuild). The machine's core count and
load average are printed beside the timings: on a shared 2-core machine a second thread
or process competes with whatever else runs.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

import uncertainty as uncertainty_bench  # noqa: E402  (benchmarks/uncertainty.py)
from uncertainty import save  # noqa: E402  (results JSON at args.out)
from direct_sampling import load  # noqa: E402  (load average beside every timing)
from scaling import finish  # noqa: E402  (wall time, JSON, tables at the end of a run)

from pyacemaker_hpc.campaign import Campaign  # noqa: E402
from pyacemaker_hpc.report import STEP_ORDER  # noqa: E402

DEMO_MACE = uncertainty_bench.MODELS[0]
QUICKSTART_ACE = ROOT / "runs" / "quickstart" / "results" / "potential.yace"
#: MACE-MP-0 "medium" as mace_run_train builds it (defaults of mace 0.3.16's arg parser for
#: everything the issue does not name); 89 elements like MACE-MP-0
MP0_MEDIUM = {"hidden_irreps": "128x0e+128x1o", "num_interactions": 2, "r_max": 6.0, "max_ell": 3,
              "correlation": 3, "num_bessel": 8, "num_polynomial_cutoff": 5, "MLP_irreps": "16x0e",
              "radial_MLP": [64, 64, 64], "n_elements": 89}


# ----------------------------------------------------------------------------------------
# structures and timing
def supercell(n_atoms: int, seed: int = 0):
    """The fcc Cu supercell (cubic 4-atom cell repeated k times per axis) closest to
    ``n_atoms``, rattled by 0.05 A: every calculator runs on exactly these positions."""
    from ase.build import bulk

    k = max(1, round((n_atoms / 4) ** (1 / 3)))
    at = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((k, k, k))
    at.positions += np.random.default_rng(seed).normal(0.0, 0.05, at.positions.shape)
    return at


def md_cost(calc, atoms, warmup: int, budget_s: float, min_steps: int, max_steps: int) -> dict:
    """Microseconds per atom per VelocityVerlet step, wall and CPU (this process, all its
    threads); the warm-up (first graph, caches) is not timed but sets how many steps fit
    the budget."""
    from ase import units
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    a = atoms.copy()
    a.calc = calc
    thermalize_momenta(a, temperature_K=300, rng=np.random.default_rng(1))
    dyn = VelocityVerlet(a, timestep=1.0 * units.fs)
    t = time.perf_counter()
    dyn.run(warmup)
    per_step = (time.perf_counter() - t) / max(warmup, 1)
    n = max(min_steps, min(max_steps, int(budget_s / max(per_step, 1e-9))))
    t, c = time.perf_counter(), time.process_time()
    dyn.run(n)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    return {"atoms": len(a), "steps": n, "seconds": dt, "cpu_seconds": cpu, "ms_per_step": 1e3 * dt / n,
            "us_per_atom_step": 1e6 * dt / (n * len(a)), "cpu_us_per_atom_step": 1e6 * cpu / (n * len(a)),
            "max_force_eV_A": float(np.linalg.norm(a.get_forces(), axis=1).max())}


# ----------------------------------------------------------------------------------------
# calculators
def mp0_size_model(workdir: Path, cell) -> str:
    """A MACE-MP-0-medium-sized ``ScaleShiftMACE`` with random weights, saved as a .model
    (reused when there). avg_num_neighbors is the Cu cell's own count within r_max; it only
    scales messages, it does not change the cost."""
    path = workdir / "mace_mp0_medium_size_random.model"
    if path.is_file():
        return str(path)
    import torch
    from mace import modules  # before e3nn: mace sets torch.load's weights-only default
    from ase.neighborlist import neighbor_list
    from e3nn import o3

    from pyacemaker_hpc.oracle.mace_surrogate import torch_dtype

    a = MP0_MEDIUM
    zs = list(range(1, a["n_elements"] + 1))
    avg_nn = len(neighbor_list("i", cell, a["r_max"])) / len(cell)
    with torch_dtype("float64"):
        torch.manual_seed(0)
        model = modules.ScaleShiftMACE(
            r_max=a["r_max"], num_bessel=a["num_bessel"], num_polynomial_cutoff=a["num_polynomial_cutoff"],
            max_ell=a["max_ell"], interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
            num_interactions=a["num_interactions"], num_elements=len(zs), hidden_irreps=o3.Irreps(a["hidden_irreps"]),
            MLP_irreps=o3.Irreps(a["MLP_irreps"]), atomic_energies=np.zeros(len(zs)), avg_num_neighbors=avg_nn,
            atomic_numbers=zs, correlation=a["correlation"], gate=torch.nn.functional.silu,
            radial_MLP=a["radial_MLP"], atomic_inter_scale=1.0, atomic_inter_shift=0.0)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    print(f"built {path.name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"avg_num_neighbors {avg_nn:.1f}", flush=True)
    return str(path)


def preset_ace(preset: str, workdir: Path, iterations: int) -> tuple[str, dict]:
    """``.yace`` of a real short pacemaker fit with the preset's basis (reused when there)."""
    from pyacemaker_hpc.config import PacemakerCfg
    from pyacemaker_hpc.tools.toy_data import label_with, perturbed_bulk
    from pyacemaker_hpc.trainer.pacemaker import PacemakerTrainer

    path, meta = workdir / f"ace_{preset}.yace", workdir / f"ace_{preset}.json"
    if path.is_file() and meta.is_file():
        return str(path), json.loads(meta.read_text())
    train = label_with(perturbed_bulk("Cu", n=20, seed=0, a=3.61))
    t = time.time()
    model = PacemakerTrainer(PacemakerCfg(preset=preset), ["Cu"], max_iterations=iterations,
                             threads=1).fit(train, str(workdir / f"fit_{preset}"), name=f"ace_{preset}")
    path.write_bytes(model.files[".yace"])
    info = {"n_functions": model.metrics.get("n_functions"), "fit_seconds": time.time() - t,
            "iterations": iterations}
    meta.write_text(json.dumps(info))
    print(f"fitted ACE {preset}: {info['n_functions']} functions in {info['fit_seconds']:.0f} s", flush=True)
    return str(path), info


def calculators(args, cell):
    """(name, family, info, factory) for every calculator of the comparison; factories
    build lazily so only one model is in memory at a time."""
    from pyacemaker_hpc.oracle.mace_surrogate import MaceCommittee

    wd = Path(args.workdir)
    maces = [("demo foundation MACE", DEMO_MACE)]
    if not args.no_mp0:
        maces.append(("MACE-MP-0-medium size", mp0_size_model(wd, cell)))
    for name, path in maces:
        for dtype in args.dtypes:
            yield (f"{name} {dtype}", "mace", {"model": path, "dtype": dtype},
                   lambda p=path, d=dtype: MaceCommittee([p], default_dtype=d).calculator())
    from pyace import PyACECalculator

    aces = [(f"ACE {p}", *preset_ace(p, wd, args.ace_iterations)) for p in args.presets]
    if QUICKSTART_ACE.is_file():
        aces.append(("ACE quickstart final", str(QUICKSTART_ACE), {"n_functions": None}))
    for name, path, info in aces:
        yield name, "ace", {"model": path, **info}, lambda p=path: PyACECalculator(p)


def part_md(args, res) -> None:
    """Every calculator x cell size x thread count; results saved as they come. MACE runs
    under its dtype as torch's default (MACECalculator builds its input tensors in it)."""
    import contextlib

    import torch

    from pyacemaker_hpc.oracle.mace_surrogate import torch_dtype

    cells = {n: supercell(n) for n in args.sizes}
    rows = res["md"]["rows"]
    for name, family, info, factory in list(calculators(args, cells[max(cells)])):
        calc = factory()
        for threads in (args.threads if family == "mace" else args.threads[:1]):
            torch.set_num_threads(threads)
            for n, cell in cells.items():
                with torch_dtype(info["dtype"]) if family == "mace" else contextlib.nullcontext():
                    r = md_cost(calc, cell, args.warmup, args.budget_s, args.min_steps, args.max_steps)
                rows.append({"calculator": name, "family": family, "threads": threads, **info, **r,
                             "load": load()})
                print(f"  {name:<34} {threads} thr {r['atoms']:4d} atoms: {r['us_per_atom_step']:10.1f} us/atom/step"
                      f" wall, {r['cpu_us_per_atom_step']:10.1f} CPU ({r['steps']} steps, {r['seconds']:.1f} s)",
                      flush=True)
                save(args, res)
        del calc
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


# ----------------------------------------------------------------------------------------
def part_label(args, res) -> None:
    """benchmarks/uncertainty.py's throughput part with this run's sizes; saves into --out."""
    ns = argparse.Namespace(n_small=args.n_small, n_large=args.n_large, batch_sizes=args.batch_sizes,
                            dtypes=args.dtypes, out=args.out,
                            threads=[int(os.environ.get("OMP_NUM_THREADS", "1"))])
    uncertainty_bench.part_throughput(ns, res)


def part_steps(args, res) -> None:
    """Per-step wall time of an existing campaign (the last run of each step)."""
    camp = Campaign(args.campaign, readonly=True)
    order = {n: i for i, n in enumerate(STEP_ORDER)}
    steps = sorted(camp.steps().items(), key=lambda kv: order.get(kv[0], len(order)))
    rows = [{"step": n, "status": i.get("status"), "seconds": float(i["seconds"]) if i.get("seconds") not in (None, "") else None,
             "started": i.get("started"), "finished": i.get("finished")} for n, i in steps]
    dft = {s: camp.label_counts(s, "dft") for s in ("dft", "holdout") if camp.has_labels(s, "dft")}
    res["steps"] = {"campaign": str(args.campaign), "rows": rows, "dft_labels": dft,
                    "sum_s": sum(r["seconds"] or 0.0 for r in rows)}


# ----------------------------------------------------------------------------------------
def print_md(md: dict) -> None:
    """us/atom/step per calculator and size (wall, then CPU), then MACE/ACE cost ratios."""
    rows = md["rows"]
    sizes = sorted({r["atoms"] for r in rows})
    table: dict = {}
    for r in rows:
        table.setdefault((r["calculator"], r["threads"]), {})[r["atoms"]] = r
    for key, what in (("us_per_atom_step", "wall time"), ("cpu_us_per_atom_step", "CPU time of this process")):
        print(f"\n== ASE MD step cost on CPU, {what}: us per atom per step (timed steps in brackets) ==")
        print(f"{'calculator':<36}{'thr':>4}" + "".join(f"{f'{n} atoms':>18}" for n in sizes))
        for (name, thr), by_n in table.items():
            print(f"{name:<36}{thr:>4}" + "".join(
                f"{by_n[n][key]:12.1f} ({by_n[n]['steps']:3d})" if n in by_n else f"{'-':>18}" for n in sizes))
    aces = [k for k in table if k[0].startswith("ACE")]
    maces = [k for k in table if not k[0].startswith("ACE") and k[1] == 1]
    for n in sizes if aces and maces else []:
        print(f"\nMACE / ACE cost ratio at {n} atoms, one thread, from CPU time (same cells):")
        print(f"{'':<40}" + "".join(f"{a[0][4:]:>18}" for a in aces))
        for m in maces:
            print(f"{m[0]:<40}" + "".join(
                f"{table[m][n]['cpu_us_per_atom_step'] / table[a][n]['cpu_us_per_atom_step']:17.0f}x"
                if n in table[m] and n in table[a] else f"{'-':>18}" for a in aces))


def print_steps(st: dict) -> None:
    print(f"\n== wall time per step: {st['campaign']} (last run of each step) ==")
    for r in st["rows"]:
        s = r["seconds"]
        share = f"{100 * s / st['sum_s']:5.1f} %" if s is not None and st["sum_s"] else ""
        print(f"  {r['step']:<28}{r['status'] or '':<10}{(f'{s:8.1f} s') if s is not None else '':>10}  {share}")
    print(f"  {'sum':<38}{st['sum_s']:8.1f} s")
    for s, c in st["dft_labels"].items():
        print(f"  DFT {s}: {c['done']} done, {c['failed']} failed")


def report(res: dict) -> None:
    print(f"\n{res.get('machine', '')}")
    if res.get("md", {}).get("rows"):
        print_md(res["md"])
    if "throughput" in res:
        uncertainty_bench.report({"throughput": res["throughput"]})
    if "steps" in res:
        print_steps(res["steps"])


# ----------------------------------------------------------------------------------------
QUICK = {"sizes": [32, 108], "warmup": 2, "budget_s": 10.0, "n_small": 200, "n_large": 100, "batch_sizes": [32]}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller run: " + json.dumps(QUICK))
    ap.add_argument("--parts", nargs="+", default=["md", "label", "steps"], choices=["md", "label", "steps"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 108, 256])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=30.0, help="seconds of timed MD per calculator and size")
    ap.add_argument("--min-steps", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--presets", nargs="+", default=["small", "medium", "large"],
                    choices=["tiny", "small", "medium", "large"])
    ap.add_argument("--ace-iterations", type=int, default=10)
    ap.add_argument("--no-mp0", action="store_true", help="skip the MACE-MP-0-medium-size model")
    ap.add_argument("--n-small", type=int, default=1000)
    ap.add_argument("--n-large", type=int, default=1000)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    ap.add_argument("--campaign", default=str(ROOT / "runs" / "quickstart" / "campaign.h5"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "speed.json"))
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "benchmarks" / "speed_work"))
    ap.add_argument("--report-only", action="store_true", help="print the tables of --out")
    args = ap.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    return args


def main(argv=None):
    args = parse(argv)
    if args.report_only:
        return report(json.loads(Path(args.out).read_text()))
    import torch

    res = {"settings": vars(args), "machine": f"{os.cpu_count()} cores, torch {torch.__version__}, "
                                              f"{load()} at start", "md": {"rows": []}}
    t0 = time.time()
    if "steps" in args.parts:
        part_steps(args, res)
    if "md" in args.parts:
        part_md(args, res)
    if "label" in args.parts:
        part_label(args, res)
    return finish(args, res, t0, report)


if __name__ == "__main__":
    main()
