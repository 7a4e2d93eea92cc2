"""The DFT Calculator (oracle/dft.py): real parsers, a real VASP runner, real GPAW and EMT.

VASP itself is not installed: its ``command`` is a small Python script that copies the
real outputs in ../shared/data/vasp into the run folder and exits with a chosen code, so
the runner, the parser and the failure detection all run for real.
"""
from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read

from pyacemaker_hpc.config import Config, GpawCfg, VaspCfg
from pyacemaker_hpc.core.interfaces import Oracle
from pyacemaker_hpc.core.models import DONE, FAILED, Label
from pyacemaker_hpc.oracle.dft import (
    FAILURE_CATEGORIES,
    AseOracle,
    GpawOracle,
    VaspOracle,
    category_of,
    import_labelled,
    make_dft_oracle,
    parse_vasp_dir,
    summarise_failures,
)
from pyacemaker_hpc.oracle.gpaw_calc import pulay_stress

FAKE_VASP = textwrap.dedent('''\
    """Stands in for VASP: copies real outputs from SRC into the cwd, exits with CODE."""
    import os, re, shutil, sys, time
    src, code, mode, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {os.getcwd()}\\n")
    print("fake vasp: running in", os.getcwd(), flush=True)
    if mode == "sleep":
        time.sleep(60)
    for name in ("vasprun.xml", "OUTCAR", "OSZICAR"):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), name)
    incar = open("INCAR").read()
    if mode == "unconverged_if_fast" and re.search(r"^\\s*ALGO\\s*=\\s*Fast", incar, re.M | re.I):
        # what VASP writes when the SCF stops at NELM: as many steps as NELM allows
        text = open("vasprun.xml").read()
        n = text[text.index("<calculation>"):].count("<scstep>")
        text = re.sub(r'(name="NELM">)\\s*\\d+', lambda m: m.group(1) + f"{n:6d}", text)
        open("vasprun.xml", "w").write(text)
    if code:
        print("fake vasp: something went wrong", file=sys.stderr)
    sys.exit(code)
''')


# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vasp_data(shared_dir) -> Path:
    d = shared_dir / "data" / "vasp"
    if not (d / "MgO_complete" / "vasprun.xml").is_file():
        pytest.skip(f"{d}/MgO_complete/vasprun.xml is missing")
    return d


@pytest.fixture(scope="module")
def mgo(vasp_data) -> Atoms:
    """The structure of the MgO run, as a user would hand it to the oracle."""
    at = read(vasp_data / "MgO_complete" / "vasprun.xml", format="vasp-xml")
    return Atoms(at.numbers, positions=at.positions, cell=at.cell, pbc=True)


@pytest.fixture
def vasp_env(tmp_path):
    """Fake POTCARs (header lines only: ASE copies them and never checks the physics)
    and the fake executable; ``make(src, code, mode, **cfg)`` builds a VaspOracle."""
    pp = tmp_path / "pp"
    for el, zval in (("Mg", 2.0), ("O", 6.0)):
        (pp / "potpaw_PBE" / el).mkdir(parents=True)
        (pp / "potpaw_PBE" / el / "POTCAR").write_text(
            f"  PAW_PBE {el} 08Apr2002\n {zval:.1f}\n parameters from PSCTR are:\n"
            f"   TITEL  = PAW_PBE {el} 08Apr2002\n   POMASS =   1.000; ZVAL   =    {zval:.3f}\n"
            "End of Dataset\n")
    script = tmp_path / "fake_vasp.py"
    script.write_text(FAKE_VASP)
    log = tmp_path / "calls.log"

    def make(src: Path, code: int = 0, mode: str = "copy", max_retries: int = 2, **cfg) -> VaspOracle:
        incar = {"encut": 400, "ismear": 0, "sigma": 0.05, "nelm": 100, "algo": "Fast"}
        incar.update(cfg.pop("incar", {}))
        fields = {"incar": incar, "kpoint_density": 2.0, "pp_path": str(pp),
                  "command": [sys.executable, str(script), str(src), str(code), mode, str(log)], **cfg}
        vcfg = VaspCfg(**fields)
        return VaspOracle(vcfg, max_retries=max_retries, kill_grace_s=2.0)

    def calls() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    return make, calls, tmp_path / "runs"


# ---------------------------------------------------------------------------------------
# parsing real VASP output
def test_parse_complete_vasprun_matches_ase(vasp_data):
    xml = vasp_data / "MgO_complete" / "vasprun.xml"
    ref = read(xml, format="vasp-xml")
    lab = parse_vasp_dir(vasp_data / "MgO_complete")
    assert lab.status == DONE and lab.ok, lab.error
    assert lab.energy == ref.get_potential_energy(force_consistent=True)  # TOTEN, free energy
    assert lab.energy == pytest.approx(-47.14178735, abs=1e-8)
    np.testing.assert_array_equal(lab.forces, ref.get_forces())
    np.testing.assert_array_equal(lab.stress, ref.get_stress(voigt=True))
    assert lab.stress.shape == (6,)
    sigma0 = parse_vasp_dir(vasp_data / "MgO_complete", energy="sigma0")
    assert sigma0.energy == ref.get_potential_energy()


def test_aborted_run_is_a_failed_label_not_an_exception(vasp_data):
    lab = parse_vasp_dir(vasp_data / "Ta_aborted")
    assert lab.status == FAILED and not lab.ok
    assert category_of(lab.error) == "truncated_output"
    assert "vasprun.xml" in lab.error and "ends early" in lab.error
    assert "OSZICAR: 0 electronic steps" in lab.error
    missing = parse_vasp_dir(vasp_data)  # a folder without vasprun.xml
    assert category_of(missing.error) == "missing_output"
    # an SCF that used all NELM steps is not converged (pymatgen's rule: steps < NELM)
    assert category_of(parse_vasp_dir(vasp_data / "MgO_complete", nelm=82).error) == "scf_not_converged"
    assert parse_vasp_dir(vasp_data / "MgO_complete", nelm=83).ok


def test_parse_restores_the_input_atom_order(vasp_data, tmp_path):
    """ASE's VASP writer groups atoms by element; ase-sort.dat maps them back."""
    import shutil

    shutil.copy(vasp_data / "MgO_complete" / "vasprun.xml", tmp_path / "vasprun.xml")
    order = np.array([1, 0, 2, 3, 5, 4, 6, 7])  # resort column: input i = VASP's order[i]
    (tmp_path / "ase-sort.dat").write_text("".join(f"{i} {j}\n" for i, j in zip(order, order)))
    ref = parse_vasp_dir(vasp_data / "MgO_complete")
    lab = parse_vasp_dir(tmp_path)
    np.testing.assert_array_equal(lab.forces, ref.forces[order])
    assert lab.energy == ref.energy


# ---------------------------------------------------------------------------------------
# the VASP runner with a stand-in executable
def test_vasp_runner_success_and_no_recompute(vasp_env, vasp_data, mgo):
    make, calls, runs = vasp_env
    oracle = make(vasp_data / "MgO_complete")
    assert isinstance(oracle, Oracle) and oracle.name == "vasp"
    wd = runs / "mgo"
    lab = oracle.label(mgo, str(wd))
    assert lab.ok, lab.error
    ref = parse_vasp_dir(vasp_data / "MgO_complete")
    assert lab.energy == ref.energy
    np.testing.assert_array_equal(lab.forces, ref.forces)
    np.testing.assert_array_equal(lab.stress, ref.stress)
    assert lab.seconds > 0
    # inputs written by ASE from the config; outputs of the executable kept
    incar = (wd / "INCAR").read_text()
    assert "ALGO = Fast" in incar and "ENCUT = 400" in incar and "NSW = 0" in incar
    assert "IBRION = -1" in incar and "LWAVE = .FALSE." in incar
    assert (wd / "KPOINTS").read_text().splitlines()[2] == "Gamma"
    potcar = (wd / "POTCAR").read_text()
    assert potcar.index("PAW_PBE Mg") < potcar.index("PAW_PBE O")
    assert read(wd / "POSCAR", format="vasp").get_chemical_formula() == "Mg4O4"
    assert "fake vasp: running" in (wd / "vasp.out").read_text()
    assert len(calls()) == 1
    # asking again (a restart) returns the cached result without running anything
    again = oracle.label(mgo, str(wd))
    assert again.ok and again.energy == lab.energy and len(calls()) == 1
    # another structure in the same folder is not served from that cache: the output
    # (still MgO's) no longer matches what was asked for
    moved = mgo.copy()
    moved.positions[0] += 0.1
    bad = oracle.label(moved, str(wd))
    assert category_of(bad.error) == "output_mismatch" and len(calls()) == 2
    assert (wd / "previous1" / "vasprun.xml").is_file()  # the earlier run's files, kept


def test_vasp_nonzero_exit_is_retried_then_failed(vasp_env, vasp_data, mgo):
    make, calls, runs = vasp_env
    lab = make(vasp_data / "MgO_complete", code=3, max_retries=1).label(mgo, str(runs / "x"))
    assert lab.status == FAILED
    assert category_of(lab.error) == "nonzero_exit"
    assert "exited with code 3" in lab.error and "something went wrong" in lab.error
    assert "after 2 attempts" in lab.error
    assert len(calls()) == 2
    assert "ALGO = Normal" in (runs / "x" / "INCAR").read_text()
    assert (runs / "x" / "attempt1" / "vasp.err").read_text().strip() == "fake vasp: something went wrong"


def test_vasp_walltime_stops_the_run(vasp_env, vasp_data, mgo):
    make, calls, runs = vasp_env
    oracle = make(vasp_data / "MgO_complete", mode="sleep", walltime_s=1.0)
    t0 = time.perf_counter()
    lab = oracle.label(mgo, str(runs / "slow"))
    elapsed = time.perf_counter() - t0
    assert lab.status == FAILED and category_of(lab.error) == "walltime", lab.error
    assert "walltime_s = 1 s" in lab.error
    assert elapsed < 20
    assert len(calls()) == 1  # a wall-time stop is not retried
    pid = int(calls()[0].split()[0])
    with pytest.raises(ProcessLookupError):  # the stand-in VASP is gone
        os.kill(pid, 0)


def test_vasp_scf_not_converged_then_retry_with_next_algo(vasp_env, vasp_data, mgo):
    make, calls, runs = vasp_env
    wd = runs / "scf"
    lab = make(vasp_data / "MgO_complete", mode="unconverged_if_fast").label(mgo, str(wd))
    assert lab.ok, lab.error
    assert len(calls()) == 2
    assert "ALGO = Normal" in (wd / "INCAR").read_text()  # the ladder's next rung
    kept = wd / "attempt1"
    assert "ALGO = Fast" in (kept / "INCAR").read_text()
    assert (kept / "vasprun.xml").is_file() and (kept / "vasp.out").is_file()
    assert category_of(parse_vasp_dir(kept).error) == "scf_not_converged"
    # without retries the same run is a failed label that says why
    failed = make(vasp_data / "MgO_complete", mode="unconverged_if_fast", max_retries=0).label(
        mgo, str(runs / "scf0"))
    assert category_of(failed.error) == "scf_not_converged"
    assert "reached NELM = 82" in failed.error


def test_vasp_ladder_mirrors_custodian(vasp_env, vasp_data):
    make, _, _ = vasp_env
    oracle = make(vasp_data / "MgO_complete", max_retries=5)
    assert [oracle.incar_for(k).get("algo") for k in range(3)] == ["Fast", "Normal", "All"]
    assert oracle.incar_for(3)["amix"] == 0.1 and oracle.incar_for(3)["bmix"] == 0.01
    assert oracle.incar_for(4)["nelm"] == 200
    assert oracle.ladder(5) is None


def test_vasp_input_and_launch_errors(vasp_env, vasp_data, mgo, tmp_path):
    make, calls, runs = vasp_env
    no_pp = make(vasp_data / "MgO_complete", pp_path=str(tmp_path))  # no POTCARs there
    lab = no_pp.label(mgo, str(runs / "nopp"))
    assert category_of(lab.error) == "input_error" and "POTCAR" in lab.error
    assert calls() == []
    missing_exe = VaspOracle(VaspCfg(command=[str(tmp_path / "no_such_vasp")], kpoint_density=2.0,
                                     pp_path=str(tmp_path / "pp")))
    lab = missing_exe.label(mgo, str(runs / "noexe"))
    assert category_of(lab.error) == "launch_error" and "no_such_vasp" in lab.error


# ---------------------------------------------------------------------------------------
# GPAW, in process
@pytest.fixture(scope="module")
def cu2() -> Atoms:
    at = bulk("Cu", "fcc", a=3.6, orthorhombic=True)  # 2 atoms
    at.rattle(0.05, seed=3)
    return at


def test_gpaw_matches_a_direct_gpaw_call(cu2, tmp_path):
    from ase.calculators.calculator import kptdensity2monkhorstpack
    from gpaw import GPAW, PW, FermiDirac

    oracle = GpawOracle(GpawCfg(ecut=200, kpoint_density=1.0, smearing_width=0.1, pulay_stress="estimate"))
    lab = oracle.label(cu2, str(tmp_path / "g"))
    assert lab.ok, lab.error
    assert lab.stress is not None and lab.stress.shape == (6,) and np.all(np.isfinite(lab.stress))
    assert np.abs(lab.forces).max() > 0.01  # rattled: real forces
    assert "Converged in" in (tmp_path / "g" / "gpaw.txt").read_text()

    size = kptdensity2monkhorstpack(cu2, kptdensity=1.0, even=False)
    a = cu2.copy()
    a.calc = GPAW(mode=PW(200), xc="PBE", kpts={"size": size, "gamma": True},
                  occupations=FermiDirac(0.1), txt=None)
    assert lab.energy == pytest.approx(a.get_potential_energy(force_consistent=True), abs=1e-6)
    np.testing.assert_allclose(lab.forces, a.get_forces(), atol=1e-6)
    np.testing.assert_allclose(lab.stress, a.get_stress() + pulay_stress(cu2, 200), atol=1e-7)
    # the free energy differs from GPAW's sigma->0 value (Fermi-Dirac 0.1 eV on a metal)
    assert abs(lab.energy - a.get_potential_energy()) > 1e-3
    # the work directory's cache keeps GPAW's own stress: the uncorrected oracle reuses it
    raw = GpawOracle(GpawCfg(ecut=200, kpoint_density=1.0, pulay_stress="none")).label(cu2, str(tmp_path / "g"))
    assert raw.seconds == lab.seconds  # the same calculation, not a new one
    np.testing.assert_allclose(raw.stress, a.get_stress(), atol=1e-7)
    # campaigns labelled before the key existed keep their DFT settings key
    assert "pulay_stress" not in GpawCfg(pulay_stress="none").identity()
    assert GpawCfg(pulay_stress="estimate").identity()["pulay_stress"] == "estimate"


def test_gpaw_pulay_stress_makes_the_stress_the_volume_derivative_of_the_energy(tmp_path):
    """At 300 eV, fcc Au's plane-wave stress misses ~3.4 GPa of pressure (the basis does not
    follow the cell); with the Pulay estimate the pressure is -dE/dV of the same labels."""
    from ase.units import GPa

    def pressures(mode):
        oracle = GpawOracle(GpawCfg(ecut=300, kpoint_mesh=(6, 6, 6), pulay_stress=mode))
        v, e, p = [], [], []
        for f in (0.99, 1.0, 1.01):
            at = bulk("Au", "fcc", a=4.17 * f)
            lab = oracle.label(at, str(tmp_path / f"{f}"))  # the second mode reuses the first's runs
            assert lab.ok, lab.error
            v.append(at.get_volume()), e.append(lab.energy), p.append(-lab.stress[:3].mean() / GPa)
            assert np.allclose(lab.stress[3:], 0.0, atol=1e-6)
        return p[1], -(e[2] - e[0]) / (v[2] - v[0]) / GPa

    p_fixed, p_energy = pressures("estimate")
    p_raw, _ = pressures("none")
    assert abs(p_fixed - p_energy) < 0.5, (p_fixed, p_energy)
    assert p_energy - p_raw > 2.5, (p_raw, p_energy)


def test_foundation_build_trains_on_pulay_corrected_stresses_only_when_asked(tmp_path, monkeypatch):
    """scripts/build_demo_foundation.py --pulay-stress estimate: the stand-in's stress labels
    get the same Pulay term as the pipeline's DFT (the raw labels on disk stay), and a member
    trained the other way is refused rather than reused."""
    import importlib.util
    import json

    from ase.io import write

    spec = importlib.util.spec_from_file_location(
        "build_demo_foundation", Path(__file__).resolve().parents[1] / "scripts" / "build_demo_foundation.py")
    bdf = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bdf)  # its dataclasses look themselves up there
    spec.loader.exec_module(bdf)
    raw = np.array([0.01, 0.01, 0.01, 0.0, 0.0, 0.002])
    frames = []
    for i, (el, a) in enumerate([("Cu", 3.63), ("Au", 4.16), ("Au", 4.3)]):
        at = bulk(el, "fcc", a=a, cubic=True)
        at.info.update(build_index=i, provenance=f"x:{i}", REF_energy=-1.0, REF_stress=raw)
        at.arrays["REF_forces"] = np.zeros((len(at), 3))
        frames.append(at)
    write(tmp_path / "labels.extxyz", frames, format="extxyz")
    system = bdf.SYSTEMS["CuAu"]

    monkeypatch.setattr(bdf, "PULAY_STRESS", "none")
    train, valid = bdf.split(tmp_path, system)
    assert all(np.allclose(a.info["REF_stress"], raw) for a in train + valid)

    monkeypatch.setattr(bdf, "PULAY_STRESS", "estimate")
    train, _ = bdf.split(tmp_path, system)
    for a in train:
        np.testing.assert_allclose(a.info["REF_stress"], raw + pulay_stress(a, 300.0, "RPBE"))
    by_vol = sorted(train, key=lambda a: a.get_volume() / len(a))
    extra = [a.info["REF_stress"][0] - raw[0] for a in by_vol]
    assert extra[0] < 0 and extra[1] < extra[0]  # Au's term is larger than Cu's, and negative
    assert np.allclose([a.info["REF_stress"][3:5] for a in train], 0.0)
    assert read(tmp_path / "labels.extxyz").info["REF_stress"] == pytest.approx(raw)

    member = tmp_path / "member_s0"
    member.mkdir()
    (member / "final.model").write_text("x")
    (member / "recipe.json").write_text(json.dumps({"pulay_stress": "none"}))
    with pytest.raises(SystemExit, match="pulay_stress none"):
        bdf.train_member(tmp_path, 0, train, [], 1, {}, "cuau", 8)
    monkeypatch.setattr(bdf, "PULAY_STRESS", "none")
    assert bdf.train_member(tmp_path, 0, train, [], 1, {}, "cuau", 8) == {"pulay_stress": "none"}

    # a member killed mid-training with raw stresses is not resumed on corrected ones
    killed = tmp_path / "member_s1"
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "checkpoints" / "cuau_demo_run-1_epoch-3.pt").write_text("x")
    write(killed / "train.xyz", train, format="extxyz")
    (killed / "pulay_stress.txt").write_text("none\n")
    monkeypatch.setattr(bdf, "PULAY_STRESS", "estimate")
    with pytest.raises(SystemExit, match="started with pulay_stress none"):
        bdf.train_member(tmp_path, 1, train, [], 1, {}, "cuau", 8)
    assert (killed / "checkpoints" / "cuau_demo_run-1_epoch-3.pt").is_file()


def test_gpaw_scf_failure_climbs_the_ladder(cu2, tmp_path):
    cfg = GpawCfg(ecut=200, kpoint_density=1.0, extra={"maxiter": 5})
    failed = GpawOracle(cfg, max_retries=0).label(cu2, str(tmp_path / "g0"))
    assert failed.status == FAILED and category_of(failed.error) == "scf_not_converged"
    assert "maxiter=5" in failed.error
    oracle = GpawOracle(cfg, max_retries=2)
    assert oracle.ladder(1) == {"maxiter": 10}
    assert oracle.ladder(2)["mixer"]["beta"] == 0.05
    lab = oracle.label(cu2, str(tmp_path / "g1"))
    assert lab.ok, lab.error
    assert (tmp_path / "g1" / "attempt1" / "gpaw.txt").is_file()


GPAW_UNDER_MPIEXEC = textwrap.dedent('''\
    import json, sys
    from mpi4py import MPI
    from ase.build import bulk
    from pyacemaker_hpc.config import GpawCfg
    from pyacemaker_hpc.oracle.dft import GpawOracle
    comm, root = MPI.COMM_WORLD, sys.argv[1]
    at = bulk("Cu", "fcc", a=3.6, orthorhombic=True)
    at.rattle(0.05, seed=3)
    cfg = GpawCfg(ecut=200, kpoint_density=1.0)
    shared = GpawOracle(cfg, comm=comm).label(at, f"{root}/shared")  # both ranks, one structure
    def report(kind, lab):  # one file per row: ranks printing to one stdout interleave
        with open(f"{root}/row_{comm.rank}_{kind}.json", "w") as fh:
            json.dump({"rank": comm.rank, "kind": kind, "error": lab.error, "energy": lab.energy}, fh)
    report("shared", shared)
    if comm.rank == 1:  # one DFT rank alone, the other busy elsewhere
        own = GpawOracle(cfg).label(at, f"{root}/own")
        report("own", own)
    comm.Barrier()
''')


def test_gpaw_under_mpiexec(cu2, tmp_path):
    """Under an MPI launcher GPAW's default serial backend refuses to import; the oracle
    selects GPAW's mpi4py backend and passes an explicit communicator."""
    import json
    import subprocess

    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.is_file():
        pytest.skip(f"no mpiexec beside {sys.executable}")
    serial = GpawOracle(GpawCfg(ecut=200, kpoint_density=1.0)).label(cu2, str(tmp_path / "serial"))
    script = tmp_path / "gpaw_mpi.py"
    script.write_text(GPAW_UNDER_MPIEXEC)
    env = {k: v for k, v in os.environ.items() if k != "GPAW_MPI_BACKEND"}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([str(mpiexec), "-n", "2", sys.executable, str(script), str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in tmp_path.glob("row_*.json")]
    assert sorted((r["rank"], r["kind"]) for r in rows) == [(0, "shared"), (1, "own"), (1, "shared")]
    for r in rows:
        assert r["error"] == "" and r["energy"] == pytest.approx(serial.energy, abs=1e-6), r
    assert (tmp_path / "shared" / "label.json").is_file()  # written once, by rank 0


# ---------------------------------------------------------------------------------------
# any ASE calculator
def test_ase_oracle_emt_matches_direct_call(tmp_path):
    from ase.calculators.emt import EMT

    at = bulk("Cu", cubic=True)
    at.rattle(0.05, seed=0)
    oracle = AseOracle("ase.calculators.emt.EMT", {})
    assert oracle.name == "ase-emt"
    lab = oracle.label(at, str(tmp_path / "e"))
    assert lab.ok
    ref = at.copy()
    ref.calc = EMT()
    assert lab.energy == ref.get_potential_energy()
    np.testing.assert_array_equal(lab.forces, ref.get_forces())
    np.testing.assert_array_equal(lab.stress, ref.get_stress())
    mol = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.4]])  # not periodic: no stress
    assert AseOracle().label(mol, str(tmp_path / "m")).stress is None
    with pytest.raises(ValueError, match="no_such_module"):
        AseOracle("no_such_module.Calc")


BAD_CALCS = textwrap.dedent('''\
    import numpy as np
    from ase.calculators.calculator import Calculator, all_changes

    class NaNCalc(Calculator):
        implemented_properties = ["energy", "forces"]
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.results = {"energy": float("nan"), "forces": np.zeros((len(atoms), 3))}

    class HugeForceCalc(Calculator):
        implemented_properties = ["energy", "forces"]
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            f = np.zeros((len(atoms), 3)); f[1, 2] = 1e3
            self.results = {"energy": -1.0, "forces": f}

    class CrashCalc(Calculator):
        implemented_properties = ["energy", "forces"]
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            raise RuntimeError("licence server unreachable")
''')


@pytest.mark.parametrize("cls, category, needle, attempts", [
    ("NaNCalc", "non_finite", "energy is nan", 1),
    ("HugeForceCalc", "force_too_large", "1000.0 eV/A on atom 1", 1),
    ("CrashCalc", "calculator_error", "licence server unreachable", 3),
])
def test_bad_calculators_give_failed_labels(tmp_path, monkeypatch, cls, category, needle, attempts):
    (tmp_path / "bad_calcs.py").write_text(BAD_CALCS)
    monkeypatch.syspath_prepend(str(tmp_path))
    oracle = AseOracle(f"bad_calcs.{cls}", max_retries=2)
    lab = oracle.label(bulk("Cu", cubic=True), str(tmp_path / "w"))
    assert lab.status == FAILED and category_of(lab.error) == category, lab.error
    assert needle in lab.error
    assert (f"after {attempts} attempts" in lab.error) == (attempts > 1)
    assert not (tmp_path / "w" / "label.json").exists()  # failures are not cached


# ---------------------------------------------------------------------------------------
def test_import_labelled_formats(shared_dir, vasp_data, tmp_path):
    xyz = shared_dir / "data" / "dft" / "Cu_gpaw_pbe_4atom.xyz"
    s = import_labelled(xyz, energy_key="DFT_energy", forces_key="DFT_forces", stress_key="DFT_stress")
    frames = read(xyz, index=":")
    assert len(s) == len(frames) == 150 and len(s.usable()) == 150
    assert s.labels[7].energy == frames[7].info["DFT_energy"]
    np.testing.assert_array_equal(s.labels[7].forces, frames[7].arrays["DFT_forces"])
    np.testing.assert_array_equal(s.labels[7].stress, frames[7].info["DFT_stress"])
    assert s.structures[7].calc is None and "DFT_energy" not in s.structures[7].info
    with pytest.raises(ValueError, match="Cu_gpaw_pbe_4atom.xyz: frame 0 has no 'energy'"):
        import_labelled(xyz)

    import pandas as pd

    pckl = shared_dir / "data" / "dft" / "Cu-I_pbe.pckl.gzip"
    df = pd.read_pickle(pckl, compression="gzip")
    s = import_labelled(pckl)
    assert len(s) == len(df) == 105
    assert [lab.energy for lab in s.labels] == df["energy_corrected"].tolist()
    np.testing.assert_array_equal(s.labels[-1].forces, df["forces"].iloc[-1])
    assert len(s.structures[-1]) == len(df["ase_atoms"].iloc[-1])

    s = import_labelled(vasp_data / "MgO_complete" / "vasprun.xml")
    ref = parse_vasp_dir(vasp_data / "MgO_complete")
    assert len(s) == 1 and s.labels[0].energy == ref.energy
    assert s.structures[0].get_chemical_formula() == "Mg4O4"

    s = import_labelled(vasp_data)  # a folder of runs: one good, one aborted
    assert [lab.status for lab in s.labels] == [DONE, FAILED]
    assert len(s.usable()) == 1 and len(s.structures[1]) == 144  # structure from POSCAR
    assert summarise_failures(s) == {"truncated_output": 1}

    junk = tmp_path / "notes.txt"
    junk.write_text("not a structure\n")
    with pytest.raises(ValueError, match="notes.txt"):
        import_labelled(junk)
    with pytest.raises(ValueError, match="Ta_aborted"):
        import_labelled(vasp_data / "Ta_aborted" / "vasprun.xml")


def test_summarise_failures_and_categories():
    labels = [Label.failed("scf_not_converged: x"), Label.failed("walltime: y"),
              Label.failed("scf_not_converged: z [after 3 attempts: a, b, c]"),
              Label(energy=float("nan"), forces=np.zeros((1, 3))),
              Label(energy=1.0, forces=np.zeros((1, 3)))]
    assert summarise_failures(labels) == {"scf_not_converged": 2, "non_finite": 1, "walltime": 1}
    assert {"scf_not_converged", "walltime", "truncated_output", "nonzero_exit"} <= set(FAILURE_CATEGORIES)


def test_make_dft_oracle_follows_the_config(tmp_path, monkeypatch):
    def cfg(kind: str, **dft) -> Config:
        return Config.model_validate({
            "system": {"elements": ["Cu"], "prototypes": [{"element": "Cu"}]},
            "distillation": {"step2_active_learning": {"dft_calculator": kind}},
            "dft": {"max_retries": 1, "max_force": 20.0, **dft}})

    ase_oracle = make_dft_oracle(cfg("ASE", ase={"import_path": "ase.calculators.emt.EMT"}))
    assert isinstance(ase_oracle, AseOracle) and ase_oracle.max_retries == 1
    assert ase_oracle.max_force == 20.0
    gp = make_dft_oracle(cfg("GPAW", gpaw={"ecut": 250}))
    assert isinstance(gp, GpawOracle) and gp.cfg.ecut == 250
    vp = make_dft_oracle(cfg("VASP", vasp={"command": ["vasp_std"], "pp_path": str(tmp_path)}))
    assert isinstance(vp, VaspOracle) and vp.potcar_dir() == tmp_path.resolve()


def test_existing_data_joins_the_dft_set_without_recomputing(tmp_path, shared_dir):
    """dft.existing_data: the user's labelled structures enter /structures/dft and are
    never sent to the oracle; a wrong element stops with the file's name."""
    from pyacemaker_hpc.campaign import Campaign
    from pyacemaker_hpc.config import parse_config
    from pyacemaker_hpc.parallel import Farm, Team
    from pyacemaker_hpc.steps.context import StepContext
    from pyacemaker_hpc.steps.labelling import import_existing_dft

    src = shared_dir / "data" / "dft" / "Cu_gpaw_pbe_4atom.xyz"
    cfg = parse_config({"system": {"elements": ["Cu"], "prototypes": [{"element": "Cu"}]},
                        "descriptors": {"kind": "ace"},
                        "distillation": {"enable_mace_distillation": False,
                                         "step2_active_learning": {"dft_calculator": "ASE"}},
                        "dft": {"existing_data": [{"path": str(src), "energy_key": "DFT_energy",
                                                   "forces_key": "DFT_forces", "stress_key": "DFT_stress"}]}})
    with Campaign(tmp_path / "c.h5") as camp:
        ctx = StepContext(cfg, camp, Farm(Team.create({})), tmp_path / "w", tmp_path / "o")
        ls = import_existing_dft(ctx)
        assert len(ls) == 150 and camp.label_counts("dft_existing", "dft")["done"] == 150
        back = camp.labelled_set("dft_existing", "dft")
        assert abs(back.labels[3].energy - ls.labels[3].energy) < 1e-9
    bad = parse_config({"system": {"elements": ["Ni"], "prototypes": [{"element": "Ni"}]},
                        "descriptors": {"kind": "ace"},
                        "distillation": {"enable_mace_distillation": False,
                                         "step2_active_learning": {"dft_calculator": "ASE"}},
                        "dft": {"existing_data": [{"path": str(src), "energy_key": "DFT_energy",
                                                   "forces_key": "DFT_forces"}]}})
    with Campaign(tmp_path / "d.h5") as camp:
        ctx = StepContext(bad, camp, Farm(Team.create({})), tmp_path / "w", tmp_path / "o")
        with pytest.raises(ValueError, match="Cu_gpaw_pbe_4atom.xyz: elements \\['Cu'\\]"):
            import_existing_dft(ctx)


def test_campaigns_sharing_dft_workdir_pay_once(tmp_path, monkeypatch):
    """Two campaigns with the same DFT settings and one ``dft.workdir``: the second labels
    the same structures from the first's finished calculations, with no new call."""
    from pyacemaker_hpc.campaign import Campaign
    from pyacemaker_hpc.config import parse_config
    from pyacemaker_hpc.parallel import Farm, Team
    from pyacemaker_hpc.steps.context import StepContext
    from pyacemaker_hpc.steps.labelling import label_set_with_dft

    for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "HYDRA_CONTROL_FD"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "helpers"))
    log = tmp_path / "calls.log"
    cells = [bulk("Cu", "fcc", a=3.6 + 0.02 * i, cubic=True) for i in range(3)]
    labels = []
    for run in ("a", "b"):
        cfg = parse_config({"system": {"elements": ["Cu"], "prototypes": [{"element": "Cu", "structure": "fcc"}]},
                            "campaign": {"path": str(tmp_path / run / "c.h5"), "workdir": str(tmp_path / run)},
                            "distillation": {"step2_active_learning": {"dft_calculator": "ASE"}},
                            "dft": {"workdir": str(tmp_path / "shared_dft"),
                                    "ase": {"import_path": "counting_calc.CountingEMT",
                                            "kwargs": {"log_file": str(log)}}}})
        (tmp_path / run).mkdir()
        camp = Campaign(cfg.campaign.path)
        camp.write_structures("dft", cells)
        ctx = StepContext(cfg=cfg, camp=camp, farm=Farm(Team.create({})), workdir=tmp_path / run,
                          outdir=tmp_path / run)
        labels.append(label_set_with_dft(ctx, "dft").labels)
        camp.close()
        n_calls = len(log.read_text().splitlines())
        assert n_calls == 3, f"campaign {run}: {n_calls} calculator calls"
    assert all(np.isclose(a.energy, b.energy) for a, b in zip(*labels))
    assert not (tmp_path / "a" / "dft").exists()  # everything went to dft.workdir


def test_fixed_kpoint_mesh_and_mixed_mesh_warning(tmp_path, vasp_env, vasp_data, mgo):
    """A density mesh follows strain (fcc Au at density 2.0: 4x4x4, and 3x3x3 from +1 %
    strain); ``kpoint_mesh`` fixes it for every cell, in GPAW's parameters and in VASP's
    KPOINTS file; an unset mesh leaves the cache identity as before the key existed; the
    labelling step finds same-size cells on different meshes."""
    from ase.build import bulk

    from pyacemaker_hpc.steps.labelling import mixed_kpoint_meshes

    cells = [bulk("Au", "fcc", a=4.16 * s, cubic=True) for s in (0.98, 1.0, 1.02)]
    density = GpawCfg(kpoint_density=2.0)
    assert [density.mesh(a) for a in cells] == [(4, 4, 4), (4, 4, 4), (3, 3, 3)]
    assert "kpoint_mesh" not in density.identity()
    assert dict(mixed_kpoint_meshes(density, cells)[4]) == {(4, 4, 4): 2, (3, 3, 3): 1}
    assert mixed_kpoint_meshes(density, cells[:2]) == {}

    fixed = GpawCfg(kpoint_density=2.0, kpoint_mesh=[5, 5, 5])
    assert {GpawOracle(fixed).parameters(a)["kpts"]["size"] for a in cells} == {(5, 5, 5)}
    assert fixed.identity()["kpoint_mesh"] == [5, 5, 5]
    assert mixed_kpoint_meshes(fixed, cells) == {}
    assert GpawOracle(fixed).settings() != GpawOracle(density).settings()  # a new cache key

    make, calls, runs = vasp_env
    oracle = make(vasp_data / "MgO_complete")
    oracle.cfg = oracle.cfg.model_copy(update={"kpoint_mesh": (2, 3, 4)})
    oracle.write_inputs(mgo, tmp_path, {})
    assert (tmp_path / "KPOINTS").read_text().splitlines()[3].split() == ["2", "3", "4"]
