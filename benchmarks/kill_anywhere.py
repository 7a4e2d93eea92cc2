"""Kill the running `mpirun` job with SIGKILL at random moments across all steps, re-run
after each kill, and compare the end result with an uninterrupted run.

    .venv/bin/python benchmarks/kill_anywhere.py --kills 20 --nranks 2 [--out runs/kill]

Checks after every kill: the campaign opens (h5py and pyacemaker's reader). At the end:
same selected structures, same DFT structures and labels, final ACE predictions on the
held-out set within fitting tolerance of the uninterrupted run, and how many finished DFT
calculations were repeated (the only allowed repeat is the one in flight at a kill).
Also sends one SIGTERM (what Slurm sends first) and checks the clean stop. Prints the
counts and writes them to <out>/kill_anywhere.json. EMT plays the DFT (counted per call);
the committee and teacher are the demo foundation models.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from pipeline_config import HELPERS, dft_calls, tiny_config  # noqa: E402

BIN = Path(sys.executable).parent
DATA = ROOT / "pyacemaker_hpc" / "data"


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
                PYTHONPATH=os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]))


def cmd(config, nranks):
    c = [str(BIN / "pyacemaker-hpc"), str(config)]
    return [str(BIN / "mpirun"), "-n", str(nranks), *c] if nranks > 1 else c


def make_config(d: Path, sleep: float) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    models = sorted(DATA.glob("cu_demo_foundation_s*.model"))
    if not models:
        sys.exit("build the demo foundation first: .venv/bin/python scripts/build_demo_foundation.py")
    return tiny_config(d, str(models[0]), [str(m) for m in models[1:]], sleep=sleep)


def running_step(h5: Path) -> str:
    try:
        with h5py.File(h5, "r") as f:
            for s in f["steps"]:
                if f["steps"][s].attrs["status"] in ("running", "interrupted"):
                    return s
            return "between steps"
    except Exception as err:  # noqa: BLE001
        return f"UNREADABLE: {err}"


def summary(h5: Path) -> dict:
    from pyacemaker_hpc.campaign import Campaign

    camp = Campaign(h5, readonly=True)
    out = {"selected": [a.info["uid"] for a in camp.read_structures("selected")],
           "dft": [a.info["uid"] for a in camp.read_structures("dft")],
           "dft_energy": [lab.energy for lab in camp.read_labels("dft", "dft")],
           "final_pred": [lab.energy for lab in camp.read_labels("holdout", "ace_final")],
           "holdout_n_atoms": [len(a) for a in camp.read_structures("holdout")]}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--nranks", type=int, default=2)
    ap.add_argument("--sleep", type=float, default=0.5, help="seconds per 'DFT' call")
    ap.add_argument("--out", default=str(ROOT / "runs" / "kill_anywhere"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    rng = np.random.default_rng(a.seed)

    ref_cfg = make_config(out / "reference", a.sleep)
    if not (out / "reference" / "campaign.h5").exists() or running_step(out / "reference" / "campaign.h5") != "between steps":
        t0 = time.time()
        subprocess.run(cmd(ref_cfg, a.nranks), env=env(), check=True, capture_output=True)
        t_ref = time.time() - t0
    else:
        t_ref = float(json.loads((out / "reference" / "t_ref.json").read_text()))
    (out / "reference" / "t_ref.json").write_text(json.dumps(t_ref))
    print(f"uninterrupted run: {t_ref:.0f} s")

    kdir = out / "killed"
    if kdir.exists():
        import shutil

        shutil.rmtree(kdir)
    cfg = make_config(kdir, a.sleep)
    h5 = kdir / "campaign.h5"
    kills, where, reruns = 0, Counter(), 0
    while kills < a.kills:
        p = subprocess.Popen(cmd(cfg, a.nranks), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        reruns += 1
        wait = float(rng.uniform(1.0, max(2.0, t_ref / 4)))
        try:
            p.wait(timeout=wait)
            if running_step(h5) == "between steps":  # finished before the kill: start over the kills
                print(f"run finished before kill {kills + 1}; the remaining kills hit a finished campaign")
                break
        except subprocess.TimeoutExpired:
            step = running_step(h5) if h5.exists() else "before the campaign existed"
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            kills += 1
            where[step] += 1
            if h5.exists():
                with h5py.File(h5, "r") as f:  # must open after every kill
                    f.attrs["format_version"]
            print(f"kill {kills:2d} after {wait:5.1f} s during {step}")
    # SIGTERM: the clean stop Slurm asks for first
    p = subprocess.Popen(cmd(cfg, a.nranks), env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    time.sleep(float(rng.uniform(2.0, max(3.0, t_ref / 4))))
    os.killpg(p.pid, signal.SIGTERM)
    t_term = time.time()
    log = p.communicate(timeout=120)[0]
    term = {"exit_code": p.returncode, "seconds_to_exit": round(time.time() - t_term, 1),
            "step": running_step(h5), "clean": "stopped by signal" in log or p.returncode == 0}
    print(f"SIGTERM: exit {p.returncode} after {term['seconds_to_exit']} s in {term['step']}")
    final = subprocess.run(cmd(cfg, a.nranks), env=env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-3000:]

    ref, got = summary(out / "reference" / "campaign.h5"), summary(h5)
    calls = dft_calls(kdir)
    repeats = sum(n - 1 for n in Counter(calls).values() if n > 1)
    dpred = np.abs(np.array(ref["final_pred"]) - np.array(got["final_pred"])) / np.array(ref["holdout_n_atoms"])
    result = {
        "kills": kills, "kills_by_step": dict(where), "runs": reruns + 2, "sigterm": term,
        "same_selected": ref["selected"] == got["selected"], "same_dft_structures": ref["dft"] == got["dft"],
        "same_dft_labels": bool(np.allclose(ref["dft_energy"], got["dft_energy"])),
        "final_ace_max_energy_diff_meV_atom": float(1000 * dpred.max()),
        "dft_calls": len(calls), "unique_dft_calls": len(set(calls)), "repeated_dft_calls": repeats,
    }
    print(json.dumps(result, indent=1))
    (out / "kill_anywhere.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
