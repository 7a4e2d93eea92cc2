"""How much of a study's held-out error is the k-point mesh of its labels, not the models.

    .venv/bin/python benchmarks/kmesh_floor.py --name cuau_k2 [--tag ep200cv]

A density-based k-mesh (``dft.<calc>.kpoint_density``) follows each cell: a strained cell
can fall on a coarser mesh than its neighbours, and its DFT energy then belongs to another
potential-energy surface. No model can learn that jump. For every finished campaign of
``benchmarks/dft_efficiency.py`` (``runs/benchmarks/dft_efficiency/<name>/distill[-<tag>]_n*_s*``)
this reads the held-out labels of every model, finds the mesh each held-out cell was
computed on (the campaign's own config), and prints, per budget and model (mean over
seeds), the RMSE on all cells, on the cells of the majority mesh and on the rest, with
the model's mean signed error on the rest: a shared large mean there, in every model, the
DFT-only ACE included, is the labels' jump. Also how many training (DFT) cells were off
the majority mesh.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dft_efficiency import RUNS, SOURCE  # noqa: E402

MODELS = {v: k for k, v in SOURCE.items() if v != "foundation"}


def run_dirs(name: str, tag: str) -> list[Path]:
    prefix = f"distill-{tag}_n" if tag else "distill_n"
    return sorted(d for d in (RUNS / name).glob(f"{prefix}*_s*") if (d / "campaign.h5").is_file())


def meshes_of(camp, group: str, dft_section) -> list[tuple]:
    return [dft_section.mesh(a) for a in camp.read_structures(group)]


def study_of(run: Path) -> dict | None:
    """Per-model errors of one campaign, split by the held-out cells' k-mesh."""
    from pyacemaker_hpc.campaign import Campaign
    from pyacemaker_hpc.config import parse_config

    cfg = parse_config(yaml.safe_load((run / "config.yaml").read_text()))
    section = getattr(cfg.dft, cfg.dft_calculator)
    if not hasattr(section, "mesh"):
        return None
    camp = Campaign(run / "campaign.h5", readonly=True)
    if not camp.exists("labels/holdout/ace_final/energy"):
        return None
    held = meshes_of(camp, "holdout", section)
    train = meshes_of(camp, "dft", section)
    major = Counter(held).most_common(1)[0][0]
    on = np.array([m == major for m in held])
    nat = np.array([len(a) for a in camp.read_structures("holdout")])
    ref = camp.read_labels("holdout", "dft")
    out = {"N": int(run.name.split("_n")[1].split("_")[0]), "major": major, "n_off": int((~on).sum()),
           "n_train_off": sum(m != major for m in train), "n_train": len(train), "models": {}}
    for src, model in MODELS.items():
        if not camp.exists(f"labels/holdout/{src}/energy"):
            continue
        pred = camp.read_labels("holdout", src)
        de = 1e3 * np.array([(p.energy - r.energy) for p, r in zip(pred, ref)]) / nat
        df = [1e3 * (p.forces - r.forces) for p, r in zip(pred, ref)]
        frms = lambda mask: float(np.sqrt(np.mean(np.concatenate([df[i].ravel() for i in np.flatnonzero(mask)]) ** 2)))
        out["models"][model] = {"E_all": float(np.sqrt(np.mean(de ** 2))), "E_major": float(np.sqrt(np.mean(de[on] ** 2))),
                                "E_off": float(np.sqrt(np.mean(de[~on] ** 2))) if (~on).any() else np.nan,
                                "E_off_mean": float(de[~on].mean()) if (~on).any() else np.nan,
                                "F_all": frms(np.ones_like(on)), "F_major": frms(on),
                                "F_off": frms(~on) if (~on).any() else np.nan}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="the study (dft_efficiency.py --name)")
    ap.add_argument("--tag", default="", help="the variant tag (dft_efficiency.py --tag)")
    args = ap.parse_args(argv)
    rows = [r for r in (study_of(d) for d in run_dirs(args.name, args.tag)) if r]
    if not rows:
        print(f"no finished campaigns under {RUNS / args.name} for tag {args.tag!r}")
        return 1
    r0 = rows[0]
    print(f"held-out: majority mesh {'x'.join(map(str, r0['major']))}, {r0['n_off']} cells on another mesh")
    for r in rows:
        print(f"  N={r['N']}: {r['n_train_off']} of {r['n_train']} DFT training cells off the majority mesh")
    print(f"{'N':>4} {'model':24} {'seeds':>5} {'E all':>7} {'E major':>8} {'E off':>7} {'mean off':>9}"
          f" {'F all':>7} {'F major':>8} {'F off':>7}   (meV/atom, meV/A)")
    keys = ("E_all", "E_major", "E_off", "E_off_mean", "F_all", "F_major", "F_off")
    for n in sorted({r["N"] for r in rows}):
        for model in MODELS.values():
            got = [r["models"][model] for r in rows if r["N"] == n and model in r["models"]]
            if got:
                v = [np.nanmean([g[k] for g in got]) for k in keys]
                print(f"{n:>4} {model:24} {len(got):>5} " + " ".join(f"{x:>{w}.1f}" for x, w in zip(v, (7, 8, 7, 9, 7, 8, 7))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
