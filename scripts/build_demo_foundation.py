#!/usr/bin/env python
"""Build the stand-in "foundation" MACE models for Cu (quickstart) or Cu-Au (benchmarks).

Why a stand-in: MACE-MP-0 is downloaded by mace at first use, and the build/CI machines
have no internet. The quickstart and the tests need a foundation that behaves for the demo
as MACE-MP-0 does for a real user: trained on *PBE-like* physics over a broad set of
structures, well converged, and still carrying a modest, systematic error against the
user's own DFT (MACE-MP-0 was fitted to VASP PBE(+U) with Materials Project settings, not to
the user's code, cutoff, smearing and k-points). The demo DFT is GPAW **PBE**, PW 300 eV,
k-point density 2.0, Fermi-Dirac 0.1 eV. The stand-in is trained on GPAW **RPBE**
(Hammer-Hansen-Norskov's revision of PBE's exchange) with a denser k-mesh (density 2.5)
and otherwise the same settings. Measured on 10 of the 4-atom PBE cells in
``../shared/data/dft/Cu_gpaw_pbe_4atom.xyz`` (same mesh for both): RPBE - PBE is 17 meV/atom
(mean offset removed), 64 meV/A in forces (forces 3 % stiffer), 23 meV/A^3 in stress;
revPBE 13 / 47 / 17; LDA, the earlier stand-in's level, 3-4x that (and ~1 eV/atom of
reference shift). The error that fine-tuning (step 3) and delta learning (step 7) remove is
therefore real but of MACE-MP-0's size, not a different material.

What it does (every stage is resumable; rerun the same command after an interruption):

1. ``label``: ~510 diverse Cu structures (fcc/bcc/hcp/sc cells of 1-8 atoms, random
   symmetric strains up to +-8 %, rattles 0.01-0.3 A, vacancies, unrattled EOS scans of
   fcc, bcc and hcp over +-8 % in lattice constant), each labelled with GPAW RPBE (energy,
   forces, stress). The kinds are interleaved, so a prefix of the list (``--n-structures``)
   still covers all of them. Labels are appended to ``<workdir>/labels*.extxyz`` one
   structure at a time, so a restart only redoes the calculation that was in flight;
   ``--shard I/N`` lets N processes label one workdir side by side. The isolated
   spin-polarised atom (same functional and cutoff) gives the models' E0, as MACE-MP's E0s
   come from isolated-atom DFT.
2. ``train``: a fixed 10 % of the structures is held out as the validation set of every
   member. Member s0 trains on all the rest; s1 and s2 on bootstrap resamples of it (with
   replacement), with their own seeds: a committee whose spread means something. Each is
   a MACE 32x0e+32x1o (max_L 1, r_max 5 A, 2 interactions, correlation 3, max_ell 2,
   float64; ``--channels``), trained with ``mace_run_train`` (energy + forces + stress
   loss, EMA, stage two with a heavier energy weight over the last quarter). max_ell 2
   rather than mace's default 3 keeps each file small: the stored symmetric-contraction
   U matrices scale with (max_ell + 1)^6 (7 MB with max_ell 3). ``--pulay-stress estimate``
   trains (and scores) on stresses with GPAW's Pulay term added, the labels on disk kept
   raw: measured on Cu-Au (README), the members' E(V) is set by their energies either way
   (held-out slope +4.6 GPa both), so it stays off.
3. ``evaluate``: RMSEs of each member on the held-out split and, for Cu, against
   ``../shared/data/dft/Cu_gpaw_pbe_4atom.xyz`` (GPAW PBE; energies after removing the mean
   per-atom offset, since the two functionals' energies have different references).

Outputs: ``pyacemaker_hpc/data/cu_demo_foundation_s{0,1,2}.model`` and
``pyacemaker_hpc/data/cu_demo_foundation.json`` (metrics and recipe). The labelled set stays
in ``<workdir>`` (default ``build/demo_foundation``, gitignored).

``--system CuAu``: the same recipe for the Cu-Au alloy benchmarks (configs/cuau.yaml):
pure fcc Cu / Au, L1_2 Cu3Au and CuAu3, L1_0 and B2 CuAu, random substitutional fcc 4- and
8-atom cells, mixed bcc/hcp, vacancies and unrattled EOS scans, lattice constants
Vegard-interpolated between Cu 3.61 and Au 4.08 A. E0s of both isolated atoms. No PBE Cu-Au
reference set exists, so ``evaluate`` scores the held-out split only. Everything, the models
included, stays in ``<workdir>`` (default ``build/demo_foundation_cuau``, models under
``models/``): the repository is not the place for them.

Usage (two cores: one labelling process per core, then one member per core)::

    for i in 0 1; do OMP_NUM_THREADS=1 python scripts/build_demo_foundation.py --stage label \
        --shard $i/2 & done; wait
    OMP_NUM_THREADS=1 python scripts/build_demo_foundation.py --stage train --members 0 &
    OMP_NUM_THREADS=1 python scripts/build_demo_foundation.py --stage train --members 1 2; wait
    OMP_NUM_THREADS=1 python scripts/build_demo_foundation.py --stage evaluate

Options: ``[--system Cu|CuAu] [--stage all|label|train|evaluate] [--epochs N]
[--n-structures N] [--xc RPBE] [--kpt-density D] [--channels C] [--shard I/N]
[--members 0 1 2] [--workdir DIR] [--models-dir DIR] [--pulay-stress none|estimate]``. A workdir holds one level of
theory: labels made with other settings are refused, not mixed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA_OUT = ROOT / "pyacemaker_hpc" / "data"

#: level of theory of the stand-in foundation: a PBE-like GGA, the demo's cutoff and
#: smearing, a denser k-mesh (one smooth surface across cells of 1-8 atoms)
GPAW_SETTINGS = dict(xc="RPBE", ecut=300.0, kpt_density=2.5, smearing=0.1)
MODELS_DIR: Optional[Path] = None       # --models-dir
CHANNELS = 32                           # --channels
KEYS = dict(energy="REF_energy", forces="REF_forces", stress="REF_stress")
#: --pulay-stress: "estimate" trains and scores on stresses with GPAW's Pulay stress added
#: (the labels on disk stay GPAW's raw output)
PULAY_STRESS = "none"
#: fcc lattice constants of the prototypes (near PBE's; the strains span RPBE's and PBE's);
#: mixed cells take the Vegard mean, bcc/hcp/sc cells the fcc volume per atom
A0 = {"Cu": 3.63, "Au": 4.14}
L12, L10 = ["Au", "Cu", "Cu", "Cu"], ["Cu", "Au", "Au", "Cu"]  # sites of the cubic fcc cell


def arch(channels: int) -> list:
    return ["--model", "MACE", "--hidden_irreps", f"{channels}x0e+{channels}x1o", "--max_L", "1",
            "--r_max", "5.0", "--num_interactions", "2", "--correlation", "3", "--max_ell", "2",
            "--num_radial_basis", "8", "--num_cutoff_basis", "5"]


@dataclass(frozen=True)
class System:
    tag: str            # file prefix: <tag>_demo_foundation_s{seed}.model
    elements: tuple
    protos: dict        # name -> (lattice, repeat, symbols: element | site list | None = random)
    plan: tuple         # (prototype, count, "" | "vac" | "eos")
    in_package: bool    # models go to pyacemaker_hpc/data (Cu) or <workdir>/models
    pbe_set: Optional[Path]
    what: str


_CU = {n: (lat, rep, "Cu") for n, lat, rep in [
    ("fcc1", "fcc", (1, 1, 1)), ("fcc2", "fcc", (2, 1, 1)), ("fcc4", "fcc-cubic", (1, 1, 1)),
    ("fcc8", "fcc", (2, 2, 2)), ("bcc1", "bcc", (1, 1, 1)), ("bcc2", "bcc-cubic", (1, 1, 1)),
    ("bcc8", "bcc", (2, 2, 2)), ("hcp2", "hcp", (1, 1, 1)), ("hcp4", "hcp", (2, 1, 1)),
    ("hcp8", "hcp", (2, 2, 1)), ("sc1", "sc", (1, 1, 1)), ("sc8", "sc", (2, 2, 2))]}
_CUAU = {"Cu-fcc1": ("fcc", (1, 1, 1), "Cu"), "Au-fcc1": ("fcc", (1, 1, 1), "Au"),
         "Cu-fcc4": ("fcc-cubic", (1, 1, 1), "Cu"), "Au-fcc4": ("fcc-cubic", (1, 1, 1), "Au"),
         "Cu-fcc8": ("fcc", (2, 2, 2), "Cu"), "Au-fcc8": ("fcc", (2, 2, 2), "Au"),
         "Cu-hcp2": ("hcp", (1, 1, 1), "Cu"), "Au-hcp2": ("hcp", (1, 1, 1), "Au"),
         "Cu-bcc2": ("bcc-cubic", (1, 1, 1), "Cu"), "Au-bcc2": ("bcc-cubic", (1, 1, 1), "Au"),
         "L12-Cu3Au": ("fcc-cubic", (1, 1, 1), L12),
         "L12-CuAu3": ("fcc-cubic", (1, 1, 1), ["Au" if e == "Cu" else "Cu" for e in L12]),
         "L10-CuAu": ("fcc-cubic", (1, 1, 1), L10), "B2-CuAu": ("bcc-cubic", (1, 1, 1), ["Cu", "Au"]),
         "fcc2-CuAu": ("fcc", (2, 1, 1), ["Cu", "Au"]),
         "fcc4-rand": ("fcc", (2, 2, 1), None), "fcc4c-rand": ("fcc-cubic", (1, 1, 1), None),
         "fcc8-rand": ("fcc", (2, 2, 2), None),
         "bcc4-rand": ("bcc-cubic", (2, 1, 1), None), "hcp4-rand": ("hcp", (2, 1, 1), None)}
SYSTEMS = {
    # fcc-heavy, as Materials Project's Cu data is, with every close-packed and open lattice
    # the demo's MD could wander towards; 4-atom fcc cells are where the demo lives
    "Cu": System("cu", ("Cu",), _CU, (
        ("fcc1", 40, ""), ("fcc2", 30, ""), ("fcc4", 150, ""), ("fcc4", 20, "vac"), ("fcc8", 35, ""),
        ("fcc8", 20, "vac"), ("bcc1", 15, ""), ("bcc2", 25, ""), ("bcc8", 8, "vac"),
        ("hcp2", 30, ""), ("hcp4", 25, ""), ("hcp8", 8, "vac"), ("sc1", 10, ""), ("sc8", 5, ""),
        ("fcc1", 21, "eos"), ("fcc4", 13, "eos"), ("bcc1", 11, "eos"), ("hcp2", 11, "eos")),
        True, ROOT.parent / "shared" / "data" / "dft" / "Cu_gpaw_pbe_4atom.xyz",
        "stand-in foundation MACE committee for the Cu quickstart (NOT MACE-MP-0)"),
    # every composition between the elements on fcc, the ordered phases, and the elemental
    # polymorphs of both ends
    "CuAu": System("cuau", ("Cu", "Au"), _CUAU, (
        ("Cu-fcc1", 20, ""), ("Au-fcc1", 20, ""), ("Cu-fcc4", 35, ""), ("Au-fcc4", 35, ""),
        ("Cu-hcp2", 10, ""), ("Au-hcp2", 10, ""), ("Cu-bcc2", 10, ""), ("Au-bcc2", 10, ""),
        ("L12-Cu3Au", 30, ""), ("L12-CuAu3", 30, ""), ("L10-CuAu", 30, ""), ("B2-CuAu", 15, ""),
        ("fcc2-CuAu", 15, ""), ("fcc4-rand", 40, ""), ("fcc4c-rand", 50, ""), ("fcc8-rand", 30, ""),
        ("fcc8-rand", 12, "vac"), ("L12-Cu3Au", 8, "vac"), ("Cu-fcc8", 6, "vac"), ("Au-fcc8", 6, "vac"),
        ("bcc4-rand", 10, ""), ("hcp4-rand", 10, ""),
        ("Cu-fcc1", 11, "eos"), ("Au-fcc1", 11, "eos"), ("Cu-fcc4", 7, "eos"), ("Au-fcc4", 7, "eos"),
        ("L12-Cu3Au", 7, "eos"), ("L12-CuAu3", 7, "eos"), ("L10-CuAu", 7, "eos")),
        False, None,
        "stand-in foundation MACE committee for the Cu-Au benchmarks (NOT MACE-MP-0)"),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------
# structures
def _cell(lattice: str, a: float, rep):
    """Cell of ``lattice`` ("fcc", "bcc", "hcp", "sc", "-cubic" for the conventional cell)
    whose fcc-equivalent lattice constant is ``a`` (bcc/hcp/sc: the same volume per atom)."""
    from ase.build import bulk

    kind, _, cubic = lattice.partition("-")
    if kind == "hcp":
        a_hcp = a / np.sqrt(2)
        return bulk("Cu", "hcp", a=a_hcp, c=a_hcp * 1.633).repeat(rep)
    a_kind = {"fcc": a, "bcc": a / 2 ** (1 / 3), "sc": a / 4 ** (1 / 3)}[kind]
    return bulk("Cu", kind, a=a_kind, cubic=bool(cubic)).repeat(rep)


def _prototype(spec, rng, scale: float = 1.0):
    """One cell of a prototype ``(lattice, repeat, symbols)``; ``symbols=None`` draws a random
    mixed Cu-Au occupation (1..n-1 Au). Lattice constant: Vegard mean of A0, x ``scale``."""
    lattice, rep, sym = spec
    n = len(_cell(lattice, 1.0, rep))
    if sym is None:
        k = int(rng.integers(1, n))
        sym = [str(e) for e in rng.permutation(["Au"] * k + ["Cu"] * (n - k))]
    elif isinstance(sym, str):
        sym = [sym] * n
    a = A0[sym[0]] if len(set(sym)) == 1 else float(np.mean([A0[e] for e in sym]))
    at = _cell(lattice, a * scale, rep)
    at.set_chemical_symbols(sym)
    return at


def make_structures(system: System = SYSTEMS["Cu"], seed: int = 2024, n_max: Optional[int] = None):
    """Deterministic list of diverse structures (same seed -> same list, for resume).

    The kinds are taken round-robin, so the first ``n_max`` are a prefix of the full list
    that still covers every kind.
    """
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    def too_close(at, factor):
        rc = covalent_radii[at.numbers] * factor
        i, j, d = neighbor_list("ijd", at, float(2 * rc.max()))
        return bool(np.any(d < rc[i] + rc[j]))

    rng = np.random.default_rng(seed)
    plan = system.plan
    order = [(e, k) for k in range(max(c for _, c, _ in plan)) for e in plan if k < e[1]]
    out = []
    for (name, count, mode), k in order[:n_max]:
        spec = system.protos[name]
        if mode == "eos":  # unrattled EOS scan: pins lattice constants and bulk moduli
            s = np.linspace(-0.08, 0.08, count)[k]
            at = _prototype(spec, rng, 1 + s)
            tag = f"{name}-eos:{s:+.3f}"
        else:
            for _attempt in range(50):
                at = _prototype(spec, rng)
                eps = rng.uniform(-0.08, 0.08, size=(3, 3))
                eps = 0.5 * (eps + eps.T)
                at.set_cell(at.cell @ (np.eye(3) + eps), scale_atoms=True)
                if mode == "vac":
                    del at[int(rng.integers(len(at)))]
                amp = float(np.exp(rng.uniform(np.log(0.01), np.log(0.3))))
                at.positions += rng.normal(0.0, amp, size=at.positions.shape)
                if not too_close(at, 0.7):
                    break
            at.wrap()
            tag = f"{name}{'-vac' if mode else ''}:rattle{amp:.3f}"
        if len(system.elements) > 1:
            tag = f"{tag}:{at.get_chemical_formula()}"
        at.info["provenance"] = f"demo_foundation:{tag}:{k}"
        out.append(at)
    for i, at in enumerate(out):
        at.info["build_index"] = i
    return out


def gpaw_calc(txt: str):
    from gpaw import GPAW, PW, FermiDirac

    return GPAW(mode=PW(GPAW_SETTINGS["ecut"]), xc=GPAW_SETTINGS["xc"],
                kpts={"density": GPAW_SETTINGS["kpt_density"], "gamma": True},
                occupations=FermiDirac(GPAW_SETTINGS["smearing"]), txt=txt)


def isolated_atom_energy(workdir: Path, el: str = "Cu") -> float:
    """Energy of a spin-polarised atom in a box at the stand-in's level of theory (the
    models' E0); cached."""
    suffix = "" if el == "Cu" else f"_{el}"  # Cu: the name the Cu build has always used
    f = workdir / f"e0{suffix}.json"
    if f.is_file():
        return float(json.loads(f.read_text())["E0"])
    from ase import Atoms
    from gpaw import GPAW, PW, FermiDirac

    t = time.time()
    at = Atoms(el, positions=[[0, 0, 0]], cell=[9.0, 9.5, 10.0], pbc=True)
    at.center()
    at.set_initial_magnetic_moments([1.0])
    at.calc = GPAW(mode=PW(GPAW_SETTINGS["ecut"]), xc=GPAW_SETTINGS["xc"], kpts=(1, 1, 1),
                   occupations=FermiDirac(0.01, fixmagmom=True), hund=True,
                   txt=str(workdir / f"e0{suffix}_gpaw.txt"))
    e0 = float(at.get_potential_energy())
    f.write_text(json.dumps({"E0": e0, "seconds": time.time() - t}))
    log(f"isolated {el} atom ({GPAW_SETTINGS['xc']}): E0 = {e0:.4f} eV ({time.time() - t:.0f} s)")
    return e0


def e0s(workdir: Path, system: System) -> dict:
    return {el: isolated_atom_energy(workdir, el) for el in system.elements}


def label_files(workdir: Path):
    """The label cache: ``labels.extxyz``, or one file per ``--shard`` process."""
    return sorted(workdir.glob("labels*.extxyz"))


def read_labels(workdir: Path):
    from ase.io import read

    return [a for f in label_files(workdir) for a in read(f, index=":")]


def stage_label(workdir: Path, system: System, n_max: Optional[int],
                shard: tuple = (0, 1)) -> None:
    from ase.io import write

    structures = make_structures(system, n_max=n_max)
    i_shard, n_shard = shard
    structures = [s for s in structures if s.info["build_index"] % n_shard == i_shard]
    # shards append to their own file: two processes never write one file
    cache = workdir / ("labels.extxyz" if n_shard == 1
                       else f"labels.shard{i_shard}of{n_shard}.extxyz")
    failed_f = workdir / ("failed.json" if n_shard == 1 else f"failed.shard{i_shard}.json")
    done = {int(a.info["build_index"]) for a in read_labels(workdir)}
    failed = json.loads(failed_f.read_text()) if failed_f.is_file() else {}
    todo = [s for s in structures if s.info["build_index"] not in done
            and str(s.info["build_index"]) not in failed]
    log(f"label: {len(structures)} structures, {len(done)} cached, {len(todo)} to do")
    if i_shard == 0:  # one process computes the isolated atoms
        e0s(workdir, system)
    t0 = time.time()
    for n, at in enumerate(todo):
        i = at.info["build_index"]
        t = time.time()
        a = at.copy()
        a.calc = gpaw_calc(str(workdir / cache.name.replace("labels", "gpaw_last")
                               .replace(".extxyz", ".txt")))
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
def split(workdir: Path, system: System):
    """Fixed ~10 % validation split: every 10th structure of each kind (a global count
    over the interleaved list would hold out the same few kinds every cycle)."""
    def held_out(a) -> bool:
        return int(a.info["provenance"].rsplit(":", 1)[1]) % 10 == 3

    frames = read_labels(workdir)
    frames.sort(key=lambda a: a.info["build_index"])
    if PULAY_STRESS == "estimate":
        add_pulay_stress(frames)
    return [a for a in frames if not held_out(a)], [a for a in frames if held_out(a)]


def add_pulay_stress(frames) -> None:
    """Make each stress label the volume derivative of its energy: at a fixed plane-wave
    cutoff GPAW 26's stress misses the Pulay term (300 eV RPBE: -0.6 GPa on fcc Cu, -3.5 on
    fcc Au), so a model trained on raw stresses learns an E(V) slope its own energies
    contradict. The same correction as the pipeline's ``dft.gpaw.pulay_stress: estimate``."""
    from pyacemaker_hpc.oracle.gpaw_calc import pulay_stress

    for a in frames:
        a.info[KEYS["stress"]] = (np.asarray(a.info[KEYS["stress"]], float)
                                  + pulay_stress(a, GPAW_SETTINGS["ecut"], GPAW_SETTINGS["xc"]))


def train_member(workdir: Path, seed: int, train, valid, epochs: int, e0: dict, tag: str,
                 channels: int) -> dict:
    from ase.data import atomic_numbers
    from ase.io import write

    mdir = workdir / f"member_s{seed}"
    final = mdir / "final.model"
    if final.is_file():
        recipe = json.loads((mdir / "recipe.json").read_text())
        if recipe.get("pulay_stress", "none") != PULAY_STRESS:
            sys.exit(f"{final} was trained with pulay_stress {recipe.get('pulay_stress', 'none')}, "
                     f"this run asks for {PULAY_STRESS} (use another --workdir)")
        log(f"train s{seed}: {final} exists, kept")
        return recipe
    # a member killed mid-training resumes from its latest mace checkpoint (same data), but
    # only with the stresses it started on: the pin is written before mace sees the data
    pin = mdir / "pulay_stress.txt"
    resume = (mdir / "train.xyz").is_file() and any((mdir / "checkpoints").glob("*.pt"))
    started = pin.read_text().strip() if pin.is_file() else "none"
    if resume and started != PULAY_STRESS:
        sys.exit(f"{mdir} was started with pulay_stress {started}, this run asks for "
                 f"{PULAY_STRESS}: its checkpoint would mix the two (use another --workdir)")
    if mdir.exists() and not resume:
        shutil.rmtree(mdir)
    mdir.mkdir(parents=True, exist_ok=True)
    pin.write_text(PULAY_STRESS + "\n")
    rng = np.random.default_rng(1000 + seed)
    if seed == 0:
        idx = np.arange(len(train))
        how = "all training structures"
    else:
        idx = np.sort(rng.integers(0, len(train), size=len(train)))
        how = f"bootstrap resample ({len(np.unique(idx))} unique of {len(train)})"
    write(mdir / "train.xyz", [train[i] for i in idx], format="extxyz")
    write(mdir / "valid.xyz", valid, format="extxyz")
    cmd = [str(Path(sys.executable).parent / "mace_run_train"), "--name", f"{tag}_demo",
           "--train_file", "train.xyz", "--valid_file", "valid.xyz",
           "--energy_key", KEYS["energy"], "--forces_key", KEYS["forces"],
           "--stress_key", KEYS["stress"], *arch(channels), "--E0s", json.dumps({atomic_numbers[el]: v for el, v in e0.items()}).replace('"', ""),
           "--loss", "stress", "--energy_weight", "1.0", "--forces_weight", "100.0",
           "--stress_weight", "10.0", "--swa", "--start_swa", str(int(0.75 * epochs)),
           "--swa_energy_weight", "1000.0", "--swa_forces_weight", "100.0",
           "--swa_stress_weight", "10.0", "--ema", "--ema_decay", "0.99",
           "--lr", "0.01", "--scheduler_patience", "15", "--batch_size", "8",
           "--valid_batch_size", "16", "--max_num_epochs", str(epochs),
           "--default_dtype", "float64", "--device", "cpu", "--seed", str(seed),
           "--num_workers", "0", "--error_table", "PerAtomRMSEstressvirials",
           "--eval_interval", "1", *(["--restart_latest"] if resume else [])]
    t = time.time()
    log(f"train s{seed}: {how}, {epochs} epochs" + (" (resumed from checkpoint)" if resume else ""))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(mdir / "mace_stdout.txt", "a" if resume else "w") as fo:
        res = subprocess.run(cmd, cwd=mdir, stdout=fo, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        tail = (mdir / "mace_stdout.txt").read_text().splitlines()[-20:]
        raise RuntimeError(f"mace_run_train failed for s{seed}:\n" + "\n".join(tail))
    src = mdir / f"{tag}_demo_stagetwo.model"
    if not src.is_file():
        src = mdir / f"{tag}_demo.model"
    recipe = {"seed": seed, "data": how, "n_train": int(len(idx)), "epochs": epochs,
              "architecture": arch(channels),
              "train_seconds": round(time.time() - t, 1), "command": cmd[1:], "source": src.name,
              "pulay_stress": PULAY_STRESS,
              # a resumed member's train_seconds cover only the run after the restart
              "resumed_from_checkpoint": resume}
    (mdir / "recipe.json").write_text(json.dumps(recipe, indent=1))
    shutil.copyfile(src, final)
    log(f"train s{seed}: done in {time.time() - t:.0f} s")
    return recipe


def out_dir(workdir: Path, system: System) -> Path:
    if MODELS_DIR is not None:
        return MODELS_DIR
    return DATA_OUT if system.in_package else workdir / "models"


def pin_settings(workdir: Path) -> None:
    """One level of theory per workdir: labels made with other GPAW settings (a different
    k-point density) must not be mixed into one training set."""
    f = workdir / "gpaw_settings.json"
    if not f.is_file():
        f.write_text(json.dumps(GPAW_SETTINGS, indent=1))
    pinned = json.loads(f.read_text())
    if pinned != GPAW_SETTINGS:
        sys.exit(f"{workdir} holds labels made with {pinned}; this run asks for {GPAW_SETTINGS}"
                 " (use another --workdir)")


def stage_train(workdir: Path, system: System, epochs: int, members=(0, 1, 2),
                channels: int = CHANNELS) -> None:
    train, valid = split(workdir, system)
    e0 = e0s(workdir, system)
    log(f"train: {len(train)} train, {len(valid)} valid structures, E0 = "
        + ", ".join(f"{el} {v:.4f}" for el, v in e0.items()) + " eV")
    out = out_dir(workdir, system)
    out.mkdir(parents=True, exist_ok=True)
    for seed in members:
        train_member(workdir, seed, train, valid, epochs, e0, system.tag, channels)
        shutil.copyfile(workdir / f"member_s{seed}" / "final.model",
                        out / f"{system.tag}_demo_foundation_s{seed}.model")


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


def stage_evaluate(workdir: Path, system: System) -> dict:
    from ase.io import read

    train, valid = split(workdir, system)
    pbe = read(system.pbe_set, index=":") if system.pbe_set and system.pbe_set.is_file() else []
    if not pbe:
        log(f"evaluate: no GPAW PBE reference set for {system.tag} "
            f"({system.pbe_set or 'none exists'}): scoring the held-out split only")
    t_label = sum(float(a.info.get("gpaw_seconds", 0.0)) for a in train + valid)
    e0 = e0s(workdir, system)
    out = out_dir(workdir, system)
    meta = {"what": system.what,
            "level_of_theory": {"code": "GPAW 26.7.0", **GPAW_SETTINGS, "pulay_stress": PULAY_STRESS,
                                "note": "a PBE-like GGA on purpose: the demo DFT is GPAW PBE, so "
                                        "the foundation carries a real, modest systematic error"},
            "architecture": " ".join(json.loads((workdir / "member_s0" / "recipe.json").read_text())
                                     .get("architecture", [])) + " --default_dtype float64",
            "e0_isolated_atom_eV": next(iter(e0.values())) if len(e0) == 1 else e0,
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
        p = out / f"{system.tag}_demo_foundation_s{seed}.model"
        rec = json.loads((workdir / f"member_s{seed}" / "recipe.json").read_text())
        m = {"file": p.name, "bytes": p.stat().st_size, "seed": seed, "data": rec["data"],
             "epochs": rec["epochs"], "train_seconds": rec["train_seconds"],
             "resumed_from_checkpoint": rec.get("resumed_from_checkpoint", False),
             "valid_same_level": rmse_block(_predict(p, valid), ve, vf, vs, nat_v, False)}
        if pbe:
            m["vs_gpaw_pbe_4atom"] = rmse_block(_predict(p, pbe), pe, pf, ps, nat_p, True)
        meta["members"][f"s{seed}"] = m
        log(f"s{seed}: {json.dumps(m)}")
    (out / f"{system.tag}_demo_foundation.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", choices=sorted(SYSTEMS), default="Cu")
    ap.add_argument("--workdir", help="default build/demo_foundation (Cu), "
                                      "build/demo_foundation_cuau (CuAu)")
    ap.add_argument("--stage", choices=["all", "label", "train", "evaluate"], default="all")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--n-structures", type=int, help="label only the first N of the list")
    ap.add_argument("--xc", default=GPAW_SETTINGS["xc"],
                    help="GPAW functional of the stand-in's labels (default RPBE; LDA was the "
                         "earlier stand-in's, 3-4x further from the demo's PBE)")
    ap.add_argument("--kpt-density", type=float, default=GPAW_SETTINGS["kpt_density"],
                    help="GPAW k-point density of the labels (default 2.5; 1.6 left tens of "
                         "meV/atom of k-point noise across cell shapes)")
    ap.add_argument("--channels", type=int, default=CHANNELS,
                    help="MACE channels of each member (hidden irreps Cx0e+Cx1o)")
    ap.add_argument("--shard", default="0/1", metavar="I/N",
                    help="label stage: every N-th structure from I, into its own file, so N "
                         "processes can label one workdir side by side")
    ap.add_argument("--members", type=int, nargs="+", default=[0, 1, 2],
                    help="train stage: which committee members (one process each side by side)")
    ap.add_argument("--pulay-stress", choices=["none", "estimate"], default="none",
                    help="train/evaluate stages: add GPAW's Pulay stress to the stress labels "
                         "(estimate), so that stresses and energies agree; pair with the "
                         "pipeline's dft.gpaw.pulay_stress: estimate")
    ap.add_argument("--models-dir", help="where the models and their json go (default "
                                         "pyacemaker_hpc/data for Cu, <workdir>/models for CuAu)")
    args = ap.parse_args(argv)
    global MODELS_DIR, PULAY_STRESS
    PULAY_STRESS = args.pulay_stress
    GPAW_SETTINGS.update(xc=args.xc, kpt_density=args.kpt_density)
    MODELS_DIR = Path(args.models_dir).resolve() if args.models_dir else None
    i_shard, n_shard = (int(x) for x in args.shard.split("/"))
    if not 0 <= i_shard < n_shard:
        ap.error(f"--shard {args.shard}: need 0 <= I < N")
    system = SYSTEMS[args.system]
    default_wd = "demo_foundation" + ("" if system.tag == "cu" else f"_{system.tag}")
    wd = Path(args.workdir or ROOT / "build" / default_wd)
    wd.mkdir(parents=True, exist_ok=True)
    pin_settings(wd)
    t0 = time.time()
    if args.stage in ("all", "label"):
        stage_label(wd, system, args.n_structures, (i_shard, n_shard))
    if args.stage in ("all", "train"):
        stage_train(wd, system, args.epochs, args.members, args.channels)
    if args.stage in ("all", "evaluate"):
        stage_evaluate(wd, system)
    log(f"finished stage {args.stage} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
