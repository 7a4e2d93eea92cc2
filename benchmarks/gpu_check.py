"""What a GPU changes for the MACE half of the pipeline (steps 1-5), measured on one machine.

    python benchmarks/gpu_check.py [--parts label md finetuned] [--campaigns A.h5 B.h5]
        [--holdout H.extxyz] [--out runs/benchmarks/gpu_check.json] [--budget-s 8]

Why: the train rank and the MACE group are meant to sit on GPUs (``mace.device: auto``),
but a CPU-only CI never runs that path. Every figure is taken on CPU (all cores) and on
CUDA in the same process, so the ratio is the machine's own:

* ``label``: structures/s of ``MaceCommittee.label_batch`` (step 5's call, and step 3's
  replay labels: the demo foundation, the pipeline's batching), 4-, 32- and 108-atom cells,
  float64 and float32, and the largest CUDA-CPU difference of the same labels (float64:
  must be round-off).
* ``md``: microseconds per atom per VelocityVerlet step (step 4's MD) for the demo
  foundation and for a MACE-MP-0-medium-sized model with random weights
  (``benchmarks/speed.py``'s), on 108-, 500- and 2048-atom cells.
* ``finetuned``: held-out E/F RMSE of the fine-tuned MACE (``mace_ft_0``) of each
  ``--campaigns`` file, e.g. the same campaign's step 3 once on CPU and once re-run with
  ``mace.device: cuda``: a GPU fine-tune must land where the CPU one did.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODELS = [str(ROOT / f"pyacemaker_hpc/data/cu_demo_foundation_s{k}.model") for k in range(3)]


def devices() -> list[str]:
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def cells(n: int, n_atoms: int, seed: int) -> list:
    from speed import supercell

    return [supercell(n_atoms, seed=seed + i) for i in range(n)]


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def part_label(args, res: dict) -> None:
    from pyacemaker_hpc.oracle.mace_surrogate import MaceCommittee

    rows = []
    for n_atoms, n in ((4, 500), (32, 200), (108, 50)):
        structs = cells(n, n_atoms, seed=n_atoms)
        for dtype in ("float64", "float32"):
            ref = None
            for dev in devices():
                comm = MaceCommittee(MODELS[:1], device=dev, default_dtype=dtype)
                comm.label_batch(structs[:8])  # warm-up: first graphs, kernels
                sync()
                t = time.perf_counter()
                labs = comm.label_batch(structs)
                sync()
                dt = time.perf_counter() - t
                row = {"atoms": len(structs[0]), "n": len(structs), "dtype": dtype, "device": dev,
                       "structs_per_s": round(len(structs) / dt, 1), "seconds": round(dt, 3)}
                if ref is None:
                    ref = labs
                else:
                    row["max_dE_meV_atom_vs_cpu"] = 1e3 * max(abs(a.energy - b.energy) / len(s)
                                                               for a, b, s in zip(labs, ref, structs))
                    row["max_dF_meV_A_vs_cpu"] = 1e3 * max(float(np.abs(a.forces - b.forces).max())
                                                           for a, b in zip(labs, ref))
                rows.append(row)
                print("label", json.dumps(row), flush=True)
    res["label"] = rows


def part_md(args, res: dict) -> None:
    import torch
    from speed import md_cost, mp0_size_model, supercell

    from pyacemaker_hpc.oracle.mace_surrogate import MaceCommittee, torch_dtype

    wd = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    rows = []
    for n_atoms in args.md_sizes:
        cell = supercell(n_atoms)
        for name, path in (("demo foundation", MODELS[0]), ("MACE-MP-0-medium size", mp0_size_model(wd, cell))):
            for dtype in ("float64", "float32"):
                for dev in devices():
                    with torch_dtype(dtype):
                        calc = MaceCommittee([path], device=dev, default_dtype=dtype).calculator()
                        r = md_cost(calc, cell, warmup=2, budget_s=args.budget_s, min_steps=3, max_steps=300)
                    row = {"model": name, "dtype": dtype, "device": dev, "threads": torch.get_num_threads(),
                           **{k: r[k] for k in ("atoms", "steps", "ms_per_step", "us_per_atom_step")}}
                    rows.append(row)
                    print("md", json.dumps(row), flush=True)
    res["md"] = rows


def part_finetuned(args, res: dict) -> None:
    from pyacemaker_hpc.campaign import Campaign
    from pyacemaker_hpc.oracle.dft import import_labelled
    from pyacemaker_hpc.oracle.mace_surrogate import MaceCommittee
    from pyacemaker_hpc.steps.evaluate import errors

    ho = import_labelled(args.holdout).usable()
    rows = []
    for path in args.campaigns:
        camp = Campaign(path, readonly=True)
        steps = {k: round(float(v.get("seconds", 0)), 1) for k, v in camp.steps().items()}
        model = camp.load_model("mace_ft_0")
        camp.close()
        files = model.write(tempfile.mkdtemp(prefix="gpu_ft_"))
        comm = MaceCommittee([files[".model"]], device=devices()[-1], default_dtype="float64")
        err = errors(ho, comm.label_batch(ho.structures))
        row = {"campaign": path, "step_seconds": steps, "finetune_metrics": model.metrics,
               **{k: round(v, 2) for k, v in err.items()}}
        rows.append(row)
        print("finetuned", json.dumps(row), flush=True)
    res["finetuned"] = rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["label", "md"], choices=["label", "md", "finetuned"])
    ap.add_argument("--campaigns", nargs="*", default=[])
    ap.add_argument("--holdout", default=str(ROOT / "runs/benchmarks/dft_efficiency_cu_rpbe_holdout.extxyz"))
    ap.add_argument("--budget-s", type=float, default=8.0, help="timed seconds per MD measurement")
    ap.add_argument("--md-sizes", type=int, nargs="+", default=[108, 500, 2048], help="atoms per MD cell")
    ap.add_argument("--out", default=str(ROOT / "runs/benchmarks/gpu_check.json"))
    args = ap.parse_args(argv)
    import torch

    res = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(res), flush=True)
    for part in args.parts:
        globals()[f"part_{part}"](args, res)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    os.sync()


if __name__ == "__main__":
    main()
