#!/usr/bin/env python
"""Build the quickstart's stand-in "foundation" MACE models for Cu.

Why a stand-in: MACE-MP-0 is downloaded by mace at first use, and the build/CI machines
have no internet. The quickstart and the tests need a foundation whose error against the
demo DFT (GPAW **PBE**, PW 300 eV, 3x3x3 k-points for a 4-atom cell) is real, modest and
systematic, as MACE-MP-0's error against a user's DFT settings is. So the stand-in is
trained on a *different level of theory*: GPAW **LDA** with otherwise the demo's settings
(PW 300 eV, the same k-point density, Fermi-Dirac 0.1 eV). LDA over-binds Cu (lattice
constant ~3.52 A against PBE's ~3.63 A, about 3 %), so the foundation is systematically
off in volume, stress and energy: the error that fine-tuning (step 3) and delta learning
(step 7) must remove.

What it does (every stage is resumable; rerun the same command after an interruption):

1. ``label``: ~260 diverse Cu structures (fcc/bcc/hcp cells of 1-8 atoms, random
   symmetric strains up to +-8 %, rattles 0.02-0.25 A, vacancies, an unrattled fcc EOS
   scan), each labelled with GPAW LDA (energy, forces, stress). Labels are appended to
   ``<workdir>/lda_labels.extxyz`` one structure at a time, so a restart only redoes the
   calculation that was in flight. The isolated spin-polarised Cu atom (LDA, same cutoff)
   gives the models' E0, as MACE-MP's E0s come from isolated-atom DFT.
2. ``train``: a fixed 10 % of the structures is held out as the validation set of every
   member. Member s0 trains on all the rest; s1 and s2 on bootstrap resamples of it (with
   replacement), with their own seeds: a committee whose spread means something. Each is
   a MACE 16x0e+16x1o (max_L 1, r_max 5 A, 2 interactions, correlation 3, max_ell 2,
   float64), trained with ``mace_run_train`` for 300 epochs (energy + forces + stress
   loss, EMA, stage two from epoch 225); the validation RMSE plateaus well before the
   end. max_ell 2 rather than mace's default 3 keeps each file ~1 MB: the stored
   symmetric-contraction U matrices scale with (max_ell + 1)^6 (7 MB with max_ell 3).

Measured on the 2-core build machine (shared, ``nice``): labelling 1974 s, training
2853 s for the three members (~15 min each), evaluation 8 s.
3. ``evaluate``: RMSEs of each member on the held-out LDA set and against
   ``../shared/data/dft/Cu_gpaw_pbe_4atom.xyz`` (GPAW PBE; energies after removing the mean
   per-atom offset, since LDA and PBE energies have different references).

Outputs: ``pyacemaker_hpc/data/cu_demo_foundation_s{0,1,2}.model`` and
``pyacemaker_hpc/data/cu_demo_foundation.json`` (metrics and recipe). The labelled LDA
set stays in ``<workdir>`` (default ``build/demo_foundation``, gitignored).

Usage::

    OMP_NUM_THREADS=1 nice python scripts/build_demo_foundation.py [--stage all|label|train|evaluate]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA_OUT = ROOT / "pyacemaker_hpc" / "data"
PBE_SET = ROOT.parent / "shared" / "data" / "dft" / "Cu_gpaw_pbe_4atom.xyz"

# level of theory of the stand-in foundation: the demo's settings with LDA instead of PBE
GPAW_SETTINGS = dict(xc="LDA", ecut=300.0, kpt_density=1.6, smearing=0.1)
ARCH = ["--model", "MACE", "--hidden_irreps", "16x0e+16x1o", "--max_L", "1", "--r_max", "5.0",
        "--num_interactions", "2", "--correlation", "3", "--max_ell", "2",
        "--num_radial_basis", "8", "--num_cutoff_basis", "5"]
KEYS = dict(energy="LDA_energy", forces="LDA_forces", stress="LDA_stress")
A_FCC = 3.61  # reference lattice constant for the prototypes (strains span LDA and PBE)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------
# structures
def make_structures(seed: int = 2024):
    """Deterministic list of diverse Cu structures (same seed -> same list, for resume)."""
    from ase.build import bulk
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    def too_close(at, factor):
        rc = covalent_radii[at.numbers] * factor
        i, j, d = neighbor_list("ijd", at, float(2 * rc.max()))
        return bool(np.any(d < rc[i] + rc[j]))

    rng = np.random.default_rng(seed)
    a_bcc = A_FCC / 2 ** (1 / 3)  # same volume per atom as fcc
    a_hcp = A_FCC / np.sqrt(2)
    protos = {
        "fcc1": lambda: bulk("Cu", "fcc", a=A_FCC),
        "fcc2": lambda: bulk("Cu", "fcc", a=A_FCC).repeat((2, 1, 1)),
        "fcc4": lambda: bulk("Cu", "fcc", a=A_FCC, cubic=True),
        "fcc8": lambda: bulk("Cu", "fcc", a=A_FCC).repeat((2, 2, 2)),
        "bcc1": lambda: bulk("Cu", "bcc", a=a_bcc),
        "bcc2": lambda: bulk("Cu", "bcc", a=a_bcc, cubic=True),
        "bcc8": lambda: bulk("Cu", "bcc", a=a_bcc).repeat((2, 2, 2)),
        "hcp2": lambda: bulk("Cu", "hcp", a=a_hcp, c=a_hcp * 1.633),
        "hcp4": lambda: bulk("Cu", "hcp", a=a_hcp, c=a_hcp * 1.633).repeat((2, 1, 1)),
        "hcp8": lambda: bulk("Cu", "hcp", a=a_hcp, c=a_hcp * 1.633).repeat((2, 2, 1)),
    }
    # (prototype, count, vacancy?) - fcc-heavy since the demo system is fcc Cu
    plan = [("fcc1", 20, False), ("fcc2", 20, False), ("fcc4", 60, False), ("fcc4", 15, True),
            ("fcc8", 16, False), ("fcc8", 12, True), ("bcc1", 12, False), ("bcc2", 18, False),
            ("bcc8", 10, True), ("hcp2", 18, False), ("hcp4", 18, False), ("hcp8", 10, True)]
    out = []
    for name, count, vac in plan:
        for k in range(count):
            for _attempt in range(50):
                at = protos[name]()
                eps = rng.uniform(-0.08, 0.08, size=(3, 3))
                eps = 0.5 * (eps + eps.T)
                at.set_cell(at.cell @ (np.eye(3) + eps), scale_atoms=True)
                if vac:
                    del at[int(rng.integers(len(at)))]
                amp = float(np.exp(rng.uniform(np.log(0.02), np.log(0.25))))
                at.positions += rng.normal(0.0, amp, size=at.positions.shape)
                if not too_close(at, 0.7):
                    break
            at.wrap()
            at.info["provenance"] = f"demo_foundation:{name}{'-vac' if vac else ''}:rattle{amp:.3f}:{k}"
            out.append(at)
    # unrattled fcc EOS scan: pins the lattice constant and bulk modulus of the foundation
    for k, s in enumerate(np.linspace(-0.08, 0.08, 17)):
        at = bulk("Cu", "fcc", a=A_FCC * (1 + s), cubic=True)
        at.info["provenance"] = f"demo_foundation:fcc4-eos:{s:+.3f}:{k}"
        out.append(at)
    for i, at in enumerate(out):
        at.info["build_index"] = i
    return out


def gpaw_calc(txt: str, kpts=None):
    from gpaw import GPAW, PW, FermiDirac

    return GPAW(mode=PW(GPAW_SETTINGS["ecut"]), xc=GPAW_SETTINGS["xc"],
                kpts=kpts or {"density": GPAW_SETTINGS["kpt_density"], "gamma": False},
                occupations=FermiDirac(GPAW_SETTINGS["smearing"]), txt=txt)


def isolated_atom_energy(workdir: Path) -> float:
    """LDA energy of a spin-polarised Cu atom in a box (the models' E0); cached."""
    f = workdir / "e0.json"
    if f.is_file():
        return float(json.loads(f.read_text())["E0"])
    from ase import Atoms
    from gpaw import GPAW, PW, FermiDirac

    t = time.time()
    at = Atoms("Cu", positions=[[0, 0, 0]], cell=[9.0, 9.5, 10.0], pbc=True)
    at.center()
    at.set_initial_magnetic_moments([1.0])
    at.calc = GPAW(mode=PW(GPAW_SETTINGS["ecut"]), xc=GPAW_SETTINGS["xc"], kpts=(1, 1, 1),
                   occupations=FermiDirac(0.01, fixmagmom=True), hund=True,
                   txt=str(workdir / "e0_gpaw.txt"))
    e0 = float(at.get_potential_energy())
    f.write_text(json.dumps({"E0": e0, "seconds": time.time() - t}))
    log(f"isolated Cu atom (LDA): E0 = {e0:.4f} eV ({time.time() - t:.0f} s)")
    return e0


def stage_label(workdir: Path) -> None:
    from ase.io import read, write

    structures = make_structures()
    cache = workdir / "lda_labels.extxyz"
    failed_f = workdir / "failed.json"
    done = set()
    if cache.is_file():
        for a in read(cache, index=":"):
            done.add(int(a.info["build_index"]))
    failed = json.loads(failed_f.read_text()) if failed_f.is_file() else {}
    todo = [s for s in structures if s.info["build_index"] not in done
            and str(s.info["build_index"]) not in failed]
    log(f"label: {len(structures)} structures, {len(done)} cached, {len(todo)} to do")
    isolated_atom_energy(workdir)
    t0 = time.time()
    for n, at in enumerate(todo):
        i = at.info["build_index"]
        t = time.time()
        a = at.copy()
        a.calc = gpaw_calc(str(workdir / "gpaw_last.txt"))
        try:
            e = float(a.get_potential_energy())
            f = a.get_forces().copy()
            s = a.get_stress(voigt=True).copy()
        except Exception as err:  # noqa: BLE001 - a failed SCF is recorded and skipped
            failed[str(i)] = f"{type(err).__name__}: {err}"
            failed_f.write_text(json.dumps(failed, indent=1))
            log(f"  {i}: FAILED {err}")
            continue
        out = at.copy()
        out.calc = None
        out.info[KEYS["energy"]] = e
        out.arrays[KEYS["forces"]] = f
        out.info[KEYS["stress"]] = s
        out.info["gpaw_seconds"] = time.time() - t
        write(cache, out, format="extxyz", append=True)  # one structure at a time: resumable
        el = time.time() - t0
        log(f"  {i} ({len(at)} at, {out.info['provenance']}): E/N={e / len(at):.4f} "
            f"max|F|={np.abs(f).max():.2f} {time.time() - t:.1f}s  [{n + 1}/{len(todo)}, "
            f"eta {el / (n + 1) * (len(todo) - n - 1) / 60:.0f} min]")
    log(f"label: done in {time.time() - t0:.0f} s")


# ----------------------------------------------------------------------------------------
def split(workdir: Path):
    from ase.io import read

    frames = read(workdir / "lda_labels.extxyz", index=":")
    frames.sort(key=lambda a: a.info["build_index"])
    valid = [a for a in frames if a.info["build_index"] % 10 == 3]
    train = [a for a in frames if a.info["build_index"] % 10 != 3]
    return train, valid


def train_member(workdir: Path, seed: int, train, valid, epochs: int, e0: float) -> dict:
    from ase.io import write

    mdir = workdir / f"member_s{seed}"
    final = mdir / "final.model"
    if final.is_file():
        log(f"train s{seed}: {final} exists, kept")
        return json.loads((mdir / "recipe.json").read_text())
    if mdir.exists():
        shutil.rmtree(mdir)
    mdir.mkdir(parents=True)
    rng = np.random.default_rng(1000 + seed)
    if seed == 0:
        idx = np.arange(len(train))
        how = "all training structures"
    else:
        idx = np.sort(rng.integers(0, len(train), size=len(train)))
        how = f"bootstrap resample ({len(np.unique(idx))} unique of {len(train)})"
    write(mdir / "train.xyz", [train[i] for i in idx], format="extxyz")
    write(mdir / "valid.xyz", valid, format="extxyz")
    cmd = [str(Path(sys.executable).parent / "mace_run_train"), "--name", "cu_demo",
           "--train_file", "train.xyz", "--valid_file", "valid.xyz",
           "--energy_key", KEYS["energy"], "--forces_key", KEYS["forces"],
           "--stress_key", KEYS["stress"], *ARCH, "--E0s", json.dumps({29: e0}).replace('"', ""),
           "--loss", "stress", "--energy_weight", "1.0", "--forces_weight", "100.0",
           "--stress_weight", "10.0", "--swa", "--start_swa", str(int(0.75 * epochs)),
           "--swa_energy_weight", "1000.0", "--swa_forces_weight", "100.0",
           "--swa_stress_weight", "10.0", "--ema", "--ema_decay", "0.99",
           "--lr", "0.01", "--scheduler_patience", "15", "--batch_size", "8",
           "--valid_batch_size", "16", "--max_num_epochs", str(epochs),
           "--default_dtype", "float64", "--device", "cpu", "--seed", str(seed),
           "--num_workers", "0", "--error_table", "PerAtomRMSEstressvirials",
           "--eval_interval", "1"]
    t = time.time()
    log(f"train s{seed}: {how}, {epochs} epochs")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(mdir / "mace_stdout.txt", "w") as fo:
        res = subprocess.run(cmd, cwd=mdir, stdout=fo, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        tail = (mdir / "mace_stdout.txt").read_text().splitlines()[-20:]
        raise RuntimeError(f"mace_run_train failed for s{seed}:\n" + "\n".join(tail))
    src = mdir / "cu_demo_stagetwo.model"
    if not src.is_file():
        src = mdir / "cu_demo.model"
    recipe = {"seed": seed, "data": how, "n_train": int(len(idx)), "epochs": epochs,
              "train_seconds": round(time.time() - t, 1), "command": cmd[1:], "source": src.name}
    (mdir / "recipe.json").write_text(json.dumps(recipe, indent=1))
    shutil.copyfile(src, final)
    log(f"train s{seed}: done in {time.time() - t:.0f} s")
    return recipe


def stage_train(workdir: Path, epochs: int) -> None:
    train, valid = split(workdir)
    e0 = isolated_atom_energy(workdir)
    log(f"train: {len(train)} train, {len(valid)} valid structures, E0 = {e0:.4f} eV")
    DATA_OUT.mkdir(parents=True, exist_ok=True)
    for seed in (0, 1, 2):
        train_member(workdir, seed, train, valid, epochs, e0)
        shutil.copyfile(workdir / f"member_s{seed}" / "final.model",
                        DATA_OUT / f"cu_demo_foundation_s{seed}.model")


# ----------------------------------------------------------------------------------------
def _predict(model_path: Path, frames):
    import torch
    from mace.calculators import MACECalculator

    dtype = torch.get_default_dtype()
    calc = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype="float64")
    e, f, s = [], [], []
    for a in frames:
        b = a.copy()
        b.calc = calc
        e.append(b.get_potential_energy())
        f.append(b.get_forces())
        s.append(b.get_stress(voigt=True))
    torch.set_default_dtype(dtype)
    return np.array(e), f, np.array(s)


def rmse_block(pred, ref_e, ref_f, ref_s, nat, shift_energy: bool):
    e, f, s = pred
    de = (e - ref_e) / nat
    offset = float(np.mean(de)) if shift_energy else 0.0
    out = {"energy_rmse_meV_per_atom": float(np.sqrt(np.mean((de - offset) ** 2)) * 1e3),
           "force_rmse_meV_per_A": float(np.sqrt(np.mean(np.concatenate(
               [(a - b).ravel() ** 2 for a, b in zip(f, ref_f)]))) * 1e3)}
    if ref_s is not None:
        out["stress_rmse_meV_per_A3"] = float(np.sqrt(np.mean((s - ref_s) ** 2)) * 1e3)
    if shift_energy:
        out["mean_energy_offset_eV_per_atom"] = offset
    return out


def stage_evaluate(workdir: Path) -> dict:
    from ase.io import read

    train, valid = split(workdir)
    pbe = read(PBE_SET, index=":") if PBE_SET.is_file() else []
    t_label = sum(float(a.info.get("gpaw_seconds", 0.0)) for a in train + valid)
    meta = {"what": "stand-in foundation MACE committee for the Cu quickstart (NOT MACE-MP-0)",
            "level_of_theory": {"code": "GPAW 26.7.0", **GPAW_SETTINGS,
                                "note": "LDA on purpose: the demo DFT is GPAW PBE, so the "
                                        "foundation carries a real, modest systematic error"},
            "architecture": " ".join(ARCH) + " --default_dtype float64",
            "e0_isolated_atom_eV": isolated_atom_energy(workdir),
            "n_structures": len(train) + len(valid), "n_valid": len(valid),
            "gpaw_cpu_seconds": round(t_label, 1), "members": {}}
    nat_v = np.array([len(a) for a in valid])
    ve = np.array([a.info[KEYS["energy"]] for a in valid])
    vf = [a.arrays[KEYS["forces"]] for a in valid]
    vs = np.array([a.info[KEYS["stress"]] for a in valid])
    if pbe:
        nat_p = np.array([len(a) for a in pbe])
        pe = np.array([a.info["DFT_energy"] for a in pbe])
        pf = [a.arrays["DFT_forces"] for a in pbe]
        ps = np.array([a.info["DFT_stress"] for a in pbe]) if "DFT_stress" in pbe[0].info else None
    for seed in (0, 1, 2):
        p = DATA_OUT / f"cu_demo_foundation_s{seed}.model"
        rec = json.loads((workdir / f"member_s{seed}" / "recipe.json").read_text())
        m = {"file": p.name, "bytes": p.stat().st_size, "seed": seed, "data": rec["data"],
             "epochs": rec["epochs"], "train_seconds": rec["train_seconds"],
             "valid_lda": rmse_block(_predict(p, valid), ve, vf, vs, nat_v, False)}
        if pbe:
            m["vs_gpaw_pbe_4atom"] = rmse_block(_predict(p, pbe), pe, pf, ps, nat_p, True)
        meta["members"][f"s{seed}"] = m
        log(f"s{seed}: {json.dumps(m)}")
    (DATA_OUT / "cu_demo_foundation.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=str(ROOT / "build" / "demo_foundation"))
    ap.add_argument("--stage", choices=["all", "label", "train", "evaluate"], default="all")
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args(argv)
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.stage in ("all", "label"):
        stage_label(wd)
    if args.stage in ("all", "train"):
        stage_train(wd, args.epochs)
    if args.stage in ("all", "evaluate"):
        stage_evaluate(wd)
    log(f"finished stage {args.stage} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
