"""Kill the running `mpirun` job with SIGKILL at random moments across all steps, re-run
after each kill, and compare the end result with an uninterrupted run.

    .venv/bin/python benchmarks/kill_anywhere.py --kills 20 --nranks 2 [--out runs/kill]

A round is a fresh campaign, killed after uniform(1, t_ref/2) s of each run until a run
finishes on its own; rounds repeat until --kills kills are done. Checks after every kill:
the campaign opens (h5py and pyacemaker's reader) and its lock is free. At the end of each
round: every step done, same selected structures, same DFT and held-out structures, same
DFT labels (status, energies, forces), final ACE predictions on the held-out set within
--tol meV/atom of the uninterrupted run, and no more repeated DFT calculations than kills
(the only allowed repeat is the one in flight at a kill). Then one SIGTERM to the process
group while a DFT calculation is in flight (what Slurm sends first): non-zero exit, the
stop logged, the campaign opens, and the re-run completes with the reference's result and
no repeat. Prints the counts, writes them to <out>/kill_anywhere.json, exits 1 on any
failure. EMT plays the DFT (counted per call); the committee and teacher are the demo
foundation models.
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


def make_config(d: Path, sleep: float, max_retries: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    models = sorted(DATA.glob("cu_demo_foundation_s*.model"))
    if not models:
        sys.exit("build the demo foundation first: .venv/bin/python scripts/build_demo_foundation.py")
    # dft.max_retries: a structure in flight at max_retries+1 job deaths is recorded as
    # `process_crash` (RetryingOracle cannot tell a kill from outside from a crashing code);
    # these kills are not the calculation's fault, so the benchmark allows more of them
    return tiny_config(d, str(models[0]), [str(m) for m in models[1:]], sleep=sleep,
                       **{"dft.max_retries": max_retries})


def job_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants. MPICH's hydra_pmi_proxy calls setsid(), so the ranks
    (and their pacemaker/mace children) are not in mpirun's process group: killpg alone
    kills only mpirun, and the ranks linger until the proxy cleans up. A job killed by the
    batch system loses every process at once, which is what this kills."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo += children.get(q, [])
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def signal_job(pid: int, sig: int) -> None:
    for _ in range(3):  # a process forked between listing and killing is caught next time
        for q in job_tree(pid):
            try:
                os.kill(q, sig)
            except ProcessLookupError:
                pass
        if sig != signal.SIGKILL:
            break


def running_step(h5: Path) -> str:
    try:
        with h5py.File(h5, "r") as f:
            for s in f["steps"]:
                if f["steps"][s].attrs["status"] in ("running", "interrupted", "failed"):
                    return s
            return "between steps"
    except Exception as err:  # noqa: BLE001
        return f"UNREADABLE: {err}"


def step_status(h5: Path, step: str) -> str:
    with h5py.File(h5, "r") as f:
        return str(f["steps"][step].attrs["status"]) if step in f["steps"] else "pending"


def check_opens(h5: Path) -> None:
    """h5py and pyacemaker's reader open the file, and the lock is free (no rank survived)."""
    from pyacemaker_hpc.campaign import Campaign

    with h5py.File(h5, "r") as f:
        f.attrs["format_version"]
    from pyacemaker_hpc.campaign import CampaignLocked

    camp = Campaign(h5, readonly=True)
    camp.steps()
    # the lock goes when the holder's last thread has exited, which may be a moment after
    # its main thread shows as a zombie; a surviving process would hold it for good
    deadline = time.time() + 10
    while True:
        try:
            Campaign(h5).close()
            return
        except CampaignLocked:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def summary(h5: Path) -> dict:
    from pyacemaker_hpc.campaign import Campaign

    camp = Campaign(h5, readonly=True)
    labels = camp.read_labels("dft", "dft")
    out = {"selected": [a.info["uid"] for a in camp.read_structures("selected")],
           "dft": [a.info["uid"] for a in camp.read_structures("dft")],
           "dft_status": [lab.status for lab in labels],
           "dft_energy": [lab.energy for lab in labels],
           "dft_forces": np.concatenate([lab.forces for lab in labels if lab.forces is not None]),
           "holdout": [a.info["uid"] for a in camp.read_structures("holdout")],
           "final_pred": [lab.energy for lab in camp.read_labels("holdout", "ace_final")],
           "holdout_n_atoms": [len(a) for a in camp.read_structures("holdout")],
           "steps_done": all(i.get("status") == "done" for i in camp.steps().values())}
    return out


def compare(ref: dict, got: dict, calls: list[str], kills: int, tol_mev: float) -> dict:
    dpred = np.abs(np.array(ref["final_pred"]) - np.array(got["final_pred"])) / np.array(ref["holdout_n_atoms"])
    repeats = sum(n - 1 for n in Counter(calls).values() if n > 1)
    r = {"all_steps_done": got["steps_done"],
         "same_selected": ref["selected"] == got["selected"],
         "same_dft_structures": ref["dft"] == got["dft"] and ref["holdout"] == got["holdout"],
         "same_dft_labels": ref["dft_status"] == got["dft_status"]
         and bool(np.allclose(ref["dft_energy"], got["dft_energy"]))
         and ref["dft_forces"].shape == got["dft_forces"].shape
         and bool(np.allclose(ref["dft_forces"], got["dft_forces"])),
         "final_ace_max_energy_diff_meV_atom": float(1000 * dpred.max()),
         "dft_calls": len(calls), "unique_dft_calls": len(set(calls)), "repeated_dft_calls": repeats}
    r["ok"] = (r["all_steps_done"] and r["same_selected"] and r["same_dft_structures"] and r["same_dft_labels"]
               and r["final_ace_max_energy_diff_meV_atom"] <= tol_mev and repeats <= kills)
    return r


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--nranks", type=int, default=2)
    ap.add_argument("--sleep", type=float, default=0.5, help="seconds per 'DFT' call")
    ap.add_argument("--out", default=str(ROOT / "runs" / "kill_anywhere"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1.0, help="final ACE tolerance, meV/atom")
    a = ap.parse_args()
    out = Path(a.out)
    rng = np.random.default_rng(a.seed)
    max_retries = a.kills + 1
    t_start = time.time()

    ref_cfg = make_config(out / "reference", a.sleep, max_retries)
    ref_h5 = out / "reference" / "campaign.h5"
    if ref_h5.exists() and (out / "reference" / "t_ref.json").exists() and summary(ref_h5)["steps_done"]:
        t_ref = float(json.loads((out / "reference" / "t_ref.json").read_text()))
    else:
        t0 = time.time()
        subprocess.run(cmd(ref_cfg, a.nranks), env=env(), check=True, capture_output=True)
        t_ref = time.time() - t0
        (out / "reference" / "t_ref.json").write_text(json.dumps(t_ref))
    print(f"uninterrupted run: {t_ref:.0f} s", flush=True)
    ref = summary(ref_h5)

    # rounds: a fresh campaign killed at random moments until a run finishes on its own;
    # its result is compared with the reference; then the next round, until --kills kills
    kills, where, runs, rounds, failures = 0, Counter(), 0, [], []
    while kills < a.kills:
        rdir = out / f"round{len(rounds)}"
        if rdir.exists():
            import shutil

            shutil.rmtree(rdir)
        cfg = make_config(rdir, a.sleep, max_retries)
        h5 = rdir / "campaign.h5"
        round_kills, round_where = 0, Counter()
        while True:
            runs += 1
            logf = rdir / f"run{runs}.log"
            with open(logf, "w") as fh:
                p = subprocess.Popen(cmd(cfg, a.nranks), env=env(), stdout=fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            wait = float(rng.uniform(1.0, max(2.0, t_ref / 2))) if kills < a.kills else 3600.0
            try:
                rc = p.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                step = running_step(h5) if h5.exists() else "before the campaign existed"
                tree = job_tree(p.pid)
                signal_job(p.pid, signal.SIGKILL)
                p.wait()
                for q in tree:  # wait for every process of the job to be gone
                    while alive(q):
                        time.sleep(0.01)
                kills += 1
                round_kills += 1
                where[step] += 1
                round_where[step] += 1
                if h5.exists():
                    try:
                        check_opens(h5)
                    except Exception as err:  # noqa: BLE001
                        failures.append(f"kill {kills}: campaign does not open: {err}")
                        print(failures[-1], flush=True)
                        break
                print(f"kill {kills:2d} after {wait:5.1f} s during {step}", flush=True)
                continue
            if rc != 0:
                failures.append(f"round {len(rounds)} run {runs} exited {rc}:\n{tail(logf)}")
                print(failures[-1], flush=True)
                break
            res = compare(ref, summary(h5), dft_calls(rdir), round_kills, a.tol)
            res.update(kills=round_kills, kills_by_step=dict(round_where))
            rounds.append(res)
            print(f"round {len(rounds) - 1} finished after {round_kills} kills: "
                  f"{'OK' if res['ok'] else 'MISMATCH'} {json.dumps(res)}", flush=True)
            if not res["ok"]:
                failures.append(f"round {len(rounds) - 1}: result differs from the reference")
            break
        if failures:
            break

    # SIGTERM (what Slurm sends first) while a DFT calculation is in flight
    term = {}
    if not failures:
        tdir = out / "sigterm"
        if tdir.exists():
            import shutil

            shutil.rmtree(tdir)
        cfg = make_config(tdir, a.sleep, max_retries)
        h5 = tdir / "campaign.h5"
        p = subprocess.Popen(cmd(cfg, a.nranks), env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
        while len(dft_calls(tdir)) < 2 and p.poll() is None:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, a.sleep)))
        n_at_term = len(dft_calls(tdir))
        signal_job(p.pid, signal.SIGTERM)  # every process of the job, as Slurm signals a step
        t_term = time.time()
        log = p.communicate(timeout=120)[0]
        (tdir / "sigterm.log").write_text(log)
        check_opens(h5)
        with h5py.File(h5, "r") as f:
            committed = sum(len(g) for g in f["oracle_cache/dft"].values()) if "oracle_cache/dft" in f else 0
        calls_after = len(dft_calls(tdir)) - n_at_term
        term = {"exit_code": p.returncode, "seconds_to_exit": round(time.time() - t_term, 1),
                "step": running_step(h5), "step_status": step_status(h5, "step2_active_learning"),
                "stopped_by_signal_logged": "stopped by signal" in log,
                "dft_done_at_sigterm": n_at_term, "dft_finished_after_sigterm": calls_after,
                "dft_committed": committed}
        final = subprocess.run(cmd(cfg, a.nranks), env=env(), capture_output=True, text=True)
        if final.returncode != 0:
            failures.append(f"re-run after SIGTERM exited {final.returncode}:\n{final.stdout[-3000:]}")
        else:
            term["rerun"] = compare(ref, summary(h5), dft_calls(tdir), 0, a.tol)
            term["ok"] = (p.returncode != 0 and term["stopped_by_signal_logged"]
                          and term["step_status"] in ("interrupted", "running") and term["rerun"]["ok"])
            if not term["ok"]:
                failures.append("SIGTERM: no clean stop or the re-run differs")
        print(f"SIGTERM: {json.dumps(term)}", flush=True)

    result = {
        "kills": kills, "kills_by_step": dict(where), "runs": runs, "rounds": len(rounds),
        "round_results": rounds, "sigterm": term,
        "repeated_dft_calls": sum(r["repeated_dft_calls"] for r in rounds),
        "max_final_ace_diff_meV_atom": max((r["final_ace_max_energy_diff_meV_atom"] for r in rounds), default=None),
        "reference_seconds": round(t_ref, 1), "total_seconds": round(time.time() - t_start, 1),
        "failures": failures, "ok": not failures,
    }
    print(json.dumps(result, indent=1))
    (out / "kill_anywhere.json").write_text(json.dumps(result, indent=1))
    sys.exit(0 if not failures else 1)


if __name__ == "__main__":
    main()
