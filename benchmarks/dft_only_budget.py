"""Is the DFT-only baseline converged?  Re-fit it at other BFGS budgets and basis sizes
on finished campaigns.

    .venv/bin/python benchmarks/dft_only_budget.py --name cu_rpbe --tag lr1e3 \
        --iterations 200 600 [--presets small medium] [--n-dft 10 20 40 80] [--seeds 1 2 3]

``benchmarks/dft_efficiency.py`` gives the DFT-only ACE the pipeline's ``max_iterations``
(the same fit budget as each of steps 6 and 7). A baseline that is still descending there
flatters the distillation, one that over-fits at a larger budget does not, and a basis
too small for the DFT labels does the same (Cu-Au, 20 calls: ``small`` 28.7, ``medium``
12.6 meV/atom): this script re-fits ``ACE on DFT labels only`` with each campaign's own
config, DFT labels and E0 reference at every ``--iterations`` value and ``--presets``
basis (default: the campaign's own) and scores it on the campaign's held-out set.
It reads the campaigns only (their folders under ``runs/benchmarks/dft_efficiency/STUDY``),
works in ``runs/benchmarks/dft_only_budget/`` and writes
``runs/benchmarks/dft_only_budget[_STUDY].json``: per (iterations, preset, N) the mean and per-seed
E RMSE (meV/atom) and F RMSE (meV/A).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "runs" / "benchmarks"


def refit(campaign_dir: Path, iterations: int, workdir: Path, preset: str | None = None) -> dict:
    """The campaign's DFT-only ACE at ``iterations`` BFGS steps (and ``preset`` basis when
    given), scored on its held-out set."""
    from pyacemaker_hpc.campaign import Campaign
    from pyacemaker_hpc.config import load_config
    from pyacemaker_hpc.steps.evaluate import errors
    from pyacemaker_hpc.steps.tasks import ace_fit_task
    from pyacemaker_hpc.trainer.pacemaker import predict

    cfg = load_config(campaign_dir / "config.yaml")
    cfg.pacemaker.max_iterations = iterations
    if preset is not None:
        cfg.pacemaker.preset = preset
    with Campaign(campaign_dir / "campaign.h5", readonly=True) as camp:
        e0 = camp.read_json("metrics/e0")
        dft, holdout = camp.labelled_set("dft", "dft"), camp.labelled_set("holdout", "dft")
    model = finished_fit(workdir / "fit", iterations, dft)
    if model is None:  # the evaluation step's own fit (same task, same E0 reference), only the budget changed
        model = ace_fit_task(cfg, e0, dft, str(workdir / "fit"), "ace_dft_only")
    return errors(holdout, predict(model, holdout.structures, str(workdir / "eval")))


def finished_fit(fit_dir: Path, iterations: int, dft):
    """The potential of an earlier run of the same re-fit (same budget, same number of
    labels, exported .yace present; the basis is in ``fit_dir``'s name), so a re-run only
    re-scores it; else None."""
    import pandas as pd
    import yaml

    from pyacemaker_hpc.core.models import TrainedModel

    inp, yace, info = fit_dir / "input.yaml", fit_dir / "output_potential.yace", fit_dir / "pacemaker.out"
    if not (inp.is_file() and yace.is_file() and info.is_file()):
        return None
    fit = (yaml.safe_load(inp.read_text()) or {}).get("fit", {})
    n_train = len(pd.read_pickle(fit_dir / "train.pckl.gzip", compression="gzip"))
    if int(fit.get("maxiter", -1)) != iterations or n_train != len(dft.usable()):
        return None
    print(f"  {fit_dir}: finished re-fit found, re-scored", flush=True)
    return TrainedModel(name="ace_dft_only", kind="ace", files={".yace": yace.read_bytes()})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="", help="study (runs/benchmarks/dft_efficiency/STUDY)")
    ap.add_argument("--tag", default="", help="distill variant whose campaigns to read")
    ap.add_argument("--iterations", type=int, nargs="+", default=[200, 600])
    ap.add_argument("--presets", nargs="+", default=[None], help="ACE basis presets (default: the campaign's)")
    ap.add_argument("--n-dft", type=int, nargs="+", default=[10, 20, 40, 80])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args(argv)

    runs = BENCH / "dft_efficiency" / args.name if args.name else BENCH / "dft_efficiency"
    head = f"distill-{args.tag}" if args.tag else "distill"
    table = []
    for it, preset in [(it, p) for it in args.iterations for p in args.presets]:
        label = f"{it}" + (f" {preset}" if preset else "")
        for n in args.n_dft:
            per_seed = {}
            for seed in args.seeds:
                d = runs / f"{head}_n{n}_s{seed}"
                if not (d / "campaign.h5").is_file():
                    print(f"{d.name}: no campaign, skipped")
                    continue
                sub = f"it{it}_{preset}_{d.name}" if preset else f"it{it}_{d.name}"
                err = refit(d, it, BENCH / "dft_only_budget" / args.name / sub, preset)
                per_seed[seed] = (err["energy_rmse_meV_atom"], err["force_rmse_meV_A"])
                print(f"{label:>12} iterations  N={n:<3} seed {seed}: E {per_seed[seed][0]:.2f} meV/atom  "
                      f"F {per_seed[seed][1]:.2f} meV/A", flush=True)
            if per_seed:
                e, f = np.mean(list(per_seed.values()), axis=0)
                table.append({"iterations": it, "preset": preset, "N": n, "E_rmse": float(e), "F_rmse": float(f),
                              "per_seed": {str(k): v for k, v in per_seed.items()}})
    print(f"\n{'iterations':>10} {'preset':>8} {'N':>4} {'E RMSE':>8} {'F RMSE':>8}   (mean over seeds)")
    for r in table:
        print(f"{r['iterations']:>10} {r['preset'] or 'own':>8} {r['N']:>4} {r['E_rmse']:>8.2f} {r['F_rmse']:>8.2f}")
    out = BENCH / f"dft_only_budget{'_' + args.name if args.name else ''}.json"
    out.write_text(json.dumps(table, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
