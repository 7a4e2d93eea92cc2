"""Where a study's held-out energy error is: composition levels, an E(V) slope, or the rest.

    .venv/bin/python benchmarks/energy_error_split.py --name cuau_rpbe [--tag T] [--n-dft 10 20]

For every finished campaign of ``benchmarks/dft_efficiency.py`` and every model on its held-out
cells, the per-atom energy error (model - DFT) is fitted, by least squares, with one level per
element (on the cells' composition fractions) and then also a slope in volume per atom. Printed
per budget and model, mean over seeds: the RMSE, the levels (meV/atom), the RMS left after
them, the slope as the pressure it stands for (-dE/dV, GPa: a model whose energies rise too
steeply on expansion has too low a pressure) and what is left after it; and the error of the
model's stress-read pressure against the DFT stresses (GPa). The two pressures differ by
what the DFT's stresses and energies disagree on: a plane-wave Pulay stress at a low cutoff
(GPAW 300 eV: ~3.4 GPa on Au, ~0.8 on Cu) shows up as a gap that every model trained on
both shares. A slope that the DFT-only ACE does not have is the teacher's.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from ase.units import GPa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dft_efficiency import RUNS  # noqa: E402
from kmesh_floor import run_dirs  # noqa: E402

from pyacemaker_hpc.steps.s5_label import pressure  # noqa: E402

MODELS = ("foundation", "mace_ft_0", "ace_base", "ace_final", "ace_dft_only")


def split(de: np.ndarray, frac: np.ndarray, vol: np.ndarray) -> dict:
    """Levels, slope and the RMS left after each, of per-atom errors ``de`` (eV/atom)."""
    levels = np.linalg.lstsq(frac, de, rcond=None)[0]
    rest = de - frac @ levels
    design = np.column_stack([frac, vol - vol.mean()])
    coef = np.linalg.lstsq(design, de, rcond=None)[0]
    rest_v = de - design @ coef

    def rms(x):
        return float(np.sqrt(np.mean(x ** 2)) * 1000)

    return {"rmse": rms(de), "levels": levels * 1000, "after_levels": rms(rest),
            "slope_GPa": -float(coef[-1]) / GPa, "after_slope": rms(rest_v)}


def study_of(run: Path, elements: list[str]) -> dict | None:
    """Per-model split of one campaign's held-out energy errors."""
    from pyacemaker_hpc.campaign import Campaign

    camp = Campaign(run / "campaign.h5", readonly=True)
    if not camp.exists("labels/holdout/ace_final/energy"):
        return None
    ho = camp.labelled_set("holdout", "dft")
    counts = np.array([[a.get_chemical_symbols().count(e) for e in elements] for a in ho.structures], float)
    nat = counts.sum(axis=1)
    frac, vol = counts / nat[:, None], np.array([a.get_volume() for a in ho.structures]) / nat
    p_dft = np.array([pressure(lab.stress) for lab in ho.labels])
    out = {"N": int(run.name.split("_n")[1].split("_")[0])}
    for key in MODELS:
        if not camp.exists(f"labels/holdout/{key}/energy"):
            continue
        pred = camp.read_labels("holdout", key)
        ok = np.array([p.ok and r.ok for p, r in zip(pred, ho.labels)])
        de = np.array([(p.energy - r.energy) / n if k else np.nan
                       for p, r, n, k in zip(pred, ho.labels, nat, ok)])
        res = split(de[ok], frac[ok], vol[ok])
        dp = np.array([pressure(p.stress) for p in pred]) - p_dft
        res["stress_GPa"] = float(np.nanmean(dp[ok]) / GPa)
        out[key] = res
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True, help="the study (runs/benchmarks/dft_efficiency/NAME)")
    ap.add_argument("--tag", default="", help="a variant's tag (default: the untagged runs)")
    ap.add_argument("--n-dft", type=int, nargs="*", help="only these budgets")
    ap.add_argument("--elements", nargs="+", default=None, help="default: read from the first campaign's config")
    args = ap.parse_args(argv)
    runs = run_dirs(args.name, args.tag)
    if not runs:
        raise SystemExit(f"no finished campaigns under {RUNS / args.name} for tag {args.tag!r}")
    elements = args.elements
    if elements is None:
        import yaml
        elements = yaml.safe_load((runs[0] / "config.yaml").read_text())["system"]["elements"]
    by_n: dict[int, list[dict]] = defaultdict(list)
    for run in runs:
        res = study_of(run, elements)
        if res and (not args.n_dft or res["N"] in args.n_dft):
            by_n[res["N"]].append(res)
    lv = " ".join(f"{e:>6s}" for e in elements)
    print(f"{'N':>3s} {'model':13s} {'seeds':>5s} {'E RMSE':>7s} {lv} {'after':>6s} "
          f"{'slope P':>8s} {'after':>6s} {'stress P':>8s}")
    for n in sorted(by_n):
        for key in MODELS:
            rows = [r[key] for r in by_n[n] if key in r]
            if not rows:
                continue
            mean = {k: np.mean([r[k] for r in rows], axis=0) for k in rows[0]}
            levels = " ".join(f"{x:+6.1f}" for x in mean["levels"])
            print(f"{n:3d} {key:13s} {len(rows):5d} {mean['rmse']:7.1f} {levels} {mean['after_levels']:6.1f} "
                  f"{mean['slope_GPa']:+8.2f} {mean['after_slope']:6.1f} {mean['stress_GPa']:+8.2f}")
    print("E RMSE, levels and 'after' in meV/atom (mean over seeds; levels are signed means); "
          "slope P: the pressure error the energies' volume slope stands for, stress P: the "
          "mean error of the stress-read pressure, both model - DFT in GPa")


if __name__ == "__main__":
    main()
