"""Step 7 alone, re-fitted with other settings on finished campaigns.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step7_variants.py --name cuau_rpbe \
        --tag e0wf30sapnops --n-dft 20 --variant default --variant k01:kappa=0.1 \
        --variant ebw:weighting=all,DE=0.1,DF=1.0 [--jobs 2]

Step 7 (weighted refit of the base ACE on teacher + DFT labels) takes ~2.5 min where a
campaign from step 3 on takes six, so its settings are screened here on each campaign's own
base ACE, teacher labels (with step 5's stored correction) and DFT picks, and scored on the
campaign's held-out cells (E meV/atom, F meV/A; mean and per seed). Variant keys:
``kappa``, ``weight_dft``, ``weight_dft_forces``, ``delta_max_iterations`` (the fit's own
settings) and ``weighting`` (``dft`` or ``all``): inside that group (the DFT picks; or the
teacher cells and the DFT picks, each) every structure's energy weight is scaled by
``1/(dE + DE)**2`` and every atom's force weight by ``1/(|F| + DF)**2``, the group's totals
kept: the form of pacemaker's ``EnergyBasedWeightingPolicy`` (dE = the structure's distance
from the group's convex hull, pyace's ``compute_convexhull_dist``; DE eV/atom, DF eV/A),
which puts the fit's weight on near-equilibrium cells like most held-out ones.
Writes ``runs/benchmarks/step7_variants[_STUDY].json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kmesh_floor import run_dirs  # noqa: E402
from teacher_finetune import BENCH, parse_variant  # noqa: E402

FIT_KEYS = ("kappa", "weight_dft_forces", "delta_max_iterations")


def policy_weights(df, rows: np.ndarray, de: float, df_: float) -> tuple[np.ndarray, list]:
    """Energy and force weights of ``rows`` of a pacemaker frame, rescaled by the
    energy-based policy's factors with the rows' energy and force totals kept."""
    from pyace.preparedata import compute_convexhull_dist

    sub = df.iloc[rows].copy()
    sub["energy_corrected_per_atom"] = sub["energy_corrected"] / sub["NUMBER_OF_ATOMS"]
    compute_convexhull_dist(sub, energy_per_atom_column="energy_corrected_per_atom")
    we = df["w_energy"].to_numpy()[rows]
    fe = 1.0 / (sub["e_chull_dist_per_atom"].to_numpy() + de) ** 2
    new_we = we.sum() * fe / fe.sum()
    wf = [df["w_forces"].iloc[i] for i in rows]
    raw = [w / (np.linalg.norm(df["forces"].iloc[i], axis=1) + df_) ** 2 for w, i in zip(wf, rows)]
    scale = sum(w.sum() for w in wf) / sum(r.sum() for r in raw)
    return new_we, [r * scale for r in raw]


def refit(run: Path, sets: dict, workdir: Path) -> dict:
    """Step 7 of campaign ``run`` with ``sets``; the final ACE's held-out errors."""
    from types import SimpleNamespace

    import pyacemaker_hpc.trainer.pacemaker as pm
    from pyacemaker_hpc.campaign import Campaign
    from pyacemaker_hpc.config import load_config
    from pyacemaker_hpc.steps.evaluate import errors
    from pyacemaker_hpc.steps.s5_label import teacher_labels
    from pyacemaker_hpc.trainer.delta import delta_fit

    cfg = load_config(run / "config.yaml")
    sets = dict(sets)
    group = sets.pop("weighting", None)
    de, df_ = float(sets.pop("DE", 0.1)), float(sets.pop("DF", 1.0))
    weight_dft = float(sets.pop("weight_dft", cfg.distillation.step7_pacemaker_finetune.weight_dft))
    unknown = set(sets) - set(FIT_KEYS)
    if unknown:
        raise SystemExit(f"unknown variant keys {sorted(unknown)}; known: weighting, DE, DF, weight_dft, {FIT_KEYS}")
    cfg.pacemaker = cfg.pacemaker.model_copy(update=sets)
    with Campaign(run / "campaign.h5", readonly=True) as camp:
        e0, base = camp.read_json("metrics/e0"), camp.load_model("ace_base")
        sur = teacher_labels(SimpleNamespace(camp=camp, cfg=cfg))  # what step 7 fitted
        dft, holdout = camp.labelled_set("dft", "dft"), camp.labelled_set("holdout", "dft")
    n_sur = len(sur.usable())

    plain = pm.to_dataframe  # put back after the fit: the pool's next job may be unweighted
    if group:
        if group not in ("dft", "all"):
            raise SystemExit(f"weighting must be dft or all, got {group!r}")
        def weighted(ls, e0_, weights=None, force_weights=None):
            frame = plain(ls, e0_, weights, force_weights)
            if weights is None:
                return frame
            we, wf = frame["w_energy"].to_numpy().copy(), list(frame["w_forces"])
            parts = [np.arange(n_sur, len(frame))] + ([np.arange(n_sur)] if group == "all" else [])
            for rows in parts:
                we[rows], new = policy_weights(frame, rows, de, df_)
                for i, w in zip(rows, new):
                    wf[i] = w
            frame["w_energy"], frame["w_forces"] = we, wf
            return frame

        pm.to_dataframe = weighted
    try:
        trainer = pm.PacemakerTrainer(cfg.pacemaker, cfg.system.elements, e0=e0, threads=1)
        model = delta_fit(trainer, base, sur, dft, mode=cfg.pacemaker.delta_mode, weight_dft=weight_dft,
                          weight_dft_forces=cfg.pacemaker.weight_dft_forces, workdir=str(workdir))
    finally:
        pm.to_dataframe = plain
    err = errors(holdout, pm.predict(model, holdout.structures, str(workdir / "holdout")))
    return {"E": err["energy_rmse_meV_atom"], "F": err["force_rmse_meV_A"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True, help="study (runs/benchmarks/dft_efficiency/STUDY)")
    ap.add_argument("--tag", default="", help="distill variant whose campaigns to read")
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=val,...; repeatable")
    ap.add_argument("--n-dft", type=int, nargs="+", default=[20])
    ap.add_argument("--jobs", type=int, default=2, help="fits at once (one thread each)")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    out = BENCH / f"step7_variants_{args.name}.json"
    table = json.loads(out.read_text()) if out.is_file() else {}
    runs = [r for r in run_dirs(args.name, args.tag) if int(r.name.split("_n")[1].split("_")[0]) in args.n_dft]
    if not runs:
        raise SystemExit(f"no finished campaigns for tag {args.tag!r} at {args.n_dft} calls")
    jobs = [(v, s, r) for v, s in variants for r in runs]
    with ProcessPoolExecutor(args.jobs) as pool:
        futs = [pool.submit(refit, r, s, BENCH / "step7_variants" / args.name / v / r.name) for v, s, r in jobs]
        for (v, s, r), fut in zip(jobs, futs):
            res = fut.result()
            print(f"{v:<12} {r.name}: final ACE E {res['E']:.2f} meV/atom  F {res['F']:.2f} meV/A", flush=True)
            key = f"{args.tag} {v}"
            table.setdefault(key, {"tag": args.tag, "variant": v, "sets": s, "per_run": {}})["per_run"][r.name] = res
    for row in table.values():
        by_n: dict = {}
        for name, res in row["per_run"].items():
            by_n.setdefault(name.split("_n")[1].split("_")[0], []).append(res)
        row["mean"] = {n: {q: float(np.mean([x[q] for x in rs])) for q in ("E", "F")} | {"seeds": len(rs)}
                       for n, rs in by_n.items()}
    out.write_text(json.dumps(table, indent=1))
    print(f"\n{'tag':<16} {'variant':<12} {'N':>4} {'seeds':>5} {'E':>7} {'F':>7}   (final ACE, held-out, mean)")
    for row in table.values():
        for n, m in sorted(row["mean"].items(), key=lambda x: int(x[0])):
            print(f"{row['tag']:<16} {row['variant']:<12} {n:>4} {m['seeds']:>5} {m['E']:>7.2f} {m['F']:>7.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
