"""How much of a reference set's 'error' is k-point noise in the DFT labels themselves.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kpoint_noise.py [--densities 1.1 2.0 3.0] \
        [--n 10] [--config configs/quickstart.yaml] [--holdout-seed 20260101]

Labels ``--n`` fresh candidates of the config's generator (drawn as the dft_efficiency
held-out set is) with the project's GPAW oracle at each k-point density
(everything else from the config) and compares every density with the densest one: the
standard deviation of the per-atom energy difference (a constant shift is harmless: it goes
into E0) and the RMS force difference. No potential can be more accurate against a label
set than that set's own noise, so a learning curve needs labels whose noise is well below
the errors it compares. Writes ``runs/benchmarks/kpoint_noise.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dft_efficiency import holdout_candidates  # noqa: E402  (the same held-out draw)

OUT = ROOT / "runs" / "benchmarks"


def label_all(base: dict, density: float, structures: list, work: Path) -> list:
    from pyacemaker_hpc.config import parse_config
    from pyacemaker_hpc.oracle.dft import make_dft_oracle

    cfg = json.loads(json.dumps(base))
    cfg.setdefault("dft", {}).setdefault("gpaw", {})["kpoint_density"] = density
    oracle = make_dft_oracle(parse_config(cfg))
    out = []
    for k, at in enumerate(structures):
        lab = oracle.label(at, str(work / f"k{density}" / f"{k:03d}"))
        out.append(lab if lab.ok else None)
        print(f"  density {density}: {k + 1}/{len(structures)} {lab.seconds:.1f} s", flush=True)
    return out


def compare(ref: list, other: list, structures: list) -> dict:
    ok = [i for i, (a, b) in enumerate(zip(ref, other)) if a is not None and b is not None]
    de = np.array([(other[i].energy - ref[i].energy) / len(structures[i]) for i in ok])
    df = np.concatenate([(other[i].forces - ref[i].forces).ravel() for i in ok])
    return {"n": len(ok), "energy_shift_meV_atom": 1e3 * float(de.mean()),
            "energy_noise_std_meV_atom": 1e3 * float(de.std()),
            "force_rms_diff_meV_A": 1e3 * float(np.sqrt(np.mean(df ** 2)))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    ap.add_argument("--densities", type=float, nargs="+", default=[1.1, 2.0, 3.0])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--holdout-seed", type=int, default=20260101)
    a = ap.parse_args(argv)
    base = yaml.safe_load(Path(a.config).read_text())
    structures = holdout_candidates(base, a.n, a.holdout_seed)
    work = OUT / "kpoint_noise_work"
    t0 = time.time()
    labels = {d: label_all(base, d, structures, work) for d in sorted(a.densities)}
    densest = max(labels)
    from ase.calculators.calculator import kpts2sizeandoffsets

    rows = {}
    print(f"\n{len(structures)} structures; reference: k-point density {densest}")
    print(f"{'density':>8} {'mesh (first cell)':>18} {'E noise std meV/atom':>21} {'F RMS diff meV/A':>17}")
    for d in sorted(labels):
        mesh = kpts2sizeandoffsets(density=d, gamma=True, atoms=structures[0])[0]
        r = compare(labels[densest], labels[d], structures) if d != densest else None
        rows[str(d)] = {"mesh": [int(x) for x in mesh], **(r or {})}
        if r:
            print(f"{d:>8} {'x'.join(map(str, mesh)):>18} {r['energy_noise_std_meV_atom']:>21.1f} "
                  f"{r['force_rms_diff_meV_A']:>17.1f}")
    out = OUT / "kpoint_noise.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "n": len(structures), "seconds": time.time() - t0,
                               "command": " ".join(sys.argv)}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
