"""VASP: inputs written by ASE, the executable run by us, results read from vasprun.xml.

ASE's ``Vasp`` calculator writes INCAR, KPOINTS, POSCAR, POTCAR (and ase-sort.dat, the
atom order); the run itself is ``subprocess.Popen(cfg.command, cwd=workdir)`` - an
argument list, never a shell string - with stdout/stderr kept in ``vasp.out`` and
``vasp.err``, in its own process group so a wall-time stop reaches every MPI rank it
started. Under Slurm put the launcher in the list (``[srun, --exact, -n, 4, vasp_std]``).

Failure detection, each with its reason: non-zero exit, wall time, no vasprun.xml,
truncated vasprun.xml, SCF not converged (electronic steps of the last ionic step >= NELM,
pymatgen's ``converged_electronic`` rule), a result for another structure. The fallback
ladder mirrors custodian's handler for unconverged SCF: ALGO Fast -> Normal -> All, then
AMIX 0.1 / BMIX 0.01, then NELM doubled; each retry reruns in the same directory after
moving the failed attempt's files to ``attemptN/``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from ase import Atoms

from ..config import VaspCfg
from ..core.models import Label
from ._common import AttemptFailed, RetryingOracle, category_of
from .ase_calc import check_energy_kind

_ALGO_RANK = {"veryfast": 0, "very_fast": 0, "fast": 0, "normal": 1, "all": 2, "conjugate": 2,
              "damped": 2}
_VASP_DEFAULT_NELM = 60


# ---------------------------------------------------------------------------------------
# parsing
def _scan_vasprun(path: Path) -> dict:
    """One streaming pass: well-formed?, NELM, ionic steps, electronic steps of the last."""
    info = {"complete": True, "error": "", "nelm": None, "n_ionic": 0, "last_scsteps": 0,
            "last_has_energy": False}
    stack: list[str] = []
    try:
        for event, elem in ET.iterparse(str(path), events=("start", "end")):
            if event == "start":
                stack.append(elem.tag)
                if elem.tag == "calculation":
                    info["n_ionic"] += 1
                    info["last_scsteps"], info["last_has_energy"] = 0, False
                continue
            stack.pop()
            parent = stack[-1] if stack else ""
            if elem.tag == "scstep" and parent == "calculation":
                info["last_scsteps"] += 1
            elif elem.tag == "energy" and parent == "calculation":
                info["last_has_energy"] = True
            elif elem.tag == "i" and elem.get("name") == "NELM" and elem.text:
                if "parameters" in stack or (info["nelm"] is None and "incar" in stack):
                    info["nelm"] = int(float(elem.text))
            if elem.tag == "calculation":
                elem.clear()
    except ET.ParseError as err:
        info["complete"], info["error"] = False, str(err)
    return info


def _hint(d: Path) -> str:
    """A short clue from the run's stderr or OSZICAR for a failure reason."""
    err = d / "vasp.err"
    if err.is_file() and err.stat().st_size:
        with open(err, "rb") as fh:
            fh.seek(max(0, err.stat().st_size - 4096))
            tail = fh.read().decode(errors="replace").strip().splitlines()[-1:]
        return f"; stderr: {tail[0][:200]!r}" if tail else ""
    osz = d / "OSZICAR"
    if osz.is_file():
        lines = osz.read_text(errors="replace").splitlines()
        n = sum(1 for ln in lines if ln[:4].rstrip(":").strip() in ("DAV", "RMM", "CG", "EDD", "DIA"))
        return f"; OSZICAR: {n} electronic steps, {sum('F=' in ln for ln in lines)} ionic steps"
    return ""


def _read_sort(d: Path, n: int) -> np.ndarray | None:
    """ASE's ase-sort.dat: the index that puts VASP's order back into the input order."""
    p = d / "ase-sort.dat"
    if not p.is_file():
        return None
    resort = np.loadtxt(p, dtype=int, ndmin=2)[:, 1]
    return resort if len(resort) == n and sorted(resort) == list(range(n)) else None


def parse_vasprun(xml: str | os.PathLike, nelm: int | None = None, energy: str = "free", *,
                  default_nelm: int = _VASP_DEFAULT_NELM) -> tuple[Atoms | None, Label]:
    """(structure, label) of the last ionic step of one vasprun.xml; never raises.

    Energy ``"free"`` is TOTEN (e_fr_energy less any PSTRESS*V term, as ASE reads it);
    ``"sigma0"`` is energy(sigma->0). Forces eV/A; stress eV/A^3 in ASE's sign and Voigt
    order (VASP's kbar times -0.1 GPa). An ``ase-sort.dat`` beside the file restores the
    atom order ASE's VASP writer changed. ``nelm``: the SCF limit; by default the NELM the
    run itself recorded, else ``default_nelm``. The structure is None when the file holds
    no complete ionic step.
    """
    xml = Path(xml)
    d = xml.parent
    if not xml.is_file():
        return None, Label.failed(f"missing_output: no {xml.name} in {d}{_hint(d)}")
    try:
        scan = _scan_vasprun(xml)
        if not scan["complete"]:
            return None, Label.failed(
                f"truncated_output: {xml} ends early ({scan['error']}): VASP stopped before "
                f"finishing{_hint(d)}")
        if scan["n_ionic"] == 0 or not scan["last_has_energy"]:
            return None, Label.failed(f"truncated_output: {xml} holds no finished ionic step{_hint(d)}")
        from ase.io import read

        at = read(str(xml), format="vasp-xml", index=-1)
        e = at.get_potential_energy(force_consistent=(check_energy_kind(energy) == "free"))
        forces = np.array(at.get_forces())
        stress = at.calc.results.get("stress")
        stress = None if stress is None else np.array(stress, dtype=float)
        plain = Atoms(at.numbers, positions=at.positions, cell=at.cell, pbc=at.pbc)
        resort = _read_sort(d, len(at))
        if resort is not None:
            plain, forces = plain[resort], forces[resort]
        limit = nelm or scan["nelm"] or default_nelm
        if scan["last_scsteps"] >= limit:
            return plain, Label.failed(
                f"scf_not_converged: {scan['last_scsteps']} electronic steps in the last ionic step "
                f"reached NELM = {limit} ({xml})")
        return plain, Label(energy=float(e), forces=forces, stress=stress)
    except Exception as err:  # noqa: BLE001 - an unreadable file is a failed label
        return None, Label.failed(f"parse_error: {xml}: {type(err).__name__}: {err}")


def parse_vasp_dir(directory: str | os.PathLike, nelm: int | None = None, energy: str = "free") -> Label:
    """The Label of the VASP run in ``directory`` (its vasprun.xml); never raises."""
    return parse_vasprun(Path(directory) / "vasprun.xml", nelm=nelm, energy=energy)[1]


def _mismatch(ref: Atoms, out: Atoms, tol: float = 1e-3) -> str | None:
    if len(ref) != len(out) or not np.array_equal(ref.numbers, out.numbers):
        return f"{out.get_chemical_formula()} in the output, {ref.get_chemical_formula()} asked for"
    if np.abs(np.asarray(ref.cell) - np.asarray(out.cell)).max() > tol:
        return "the cell differs from the one asked for"
    d = ref.get_scaled_positions(wrap=False) - out.get_scaled_positions(wrap=False)
    d -= np.round(d)
    dist = np.linalg.norm(d @ np.asarray(ref.cell), axis=1).max() if len(d) else 0.0
    return None if dist <= tol else f"positions differ by up to {dist:.2g} A from the ones asked for"


# ---------------------------------------------------------------------------------------
class VaspOracle(RetryingOracle):
    """VASP single points (NSW = 0, IBRION = -1 unless given; LWAVE/LCHARG off unless given).

    ``cfg.incar`` keys go to ASE's ``Vasp`` in lower case (unknown tags are written as
    given); k-points are Gamma-centred Monkhorst-Pack, ``cfg.kpoint_mesh`` or from ``cfg.kpoint_density``
    (ASE's definition: points per 2*pi/A) unless the INCAR sets KSPACING; POTCARs come from
    ``cfg.setups`` under ``<pp_path or $VASP_PP_PATH>/<potcar_family>`` (or ``pp_path``
    itself when it holds the element folders). ``cfg.walltime_s`` limits each attempt:
    at the limit the process group gets SIGTERM, then SIGKILL after ``kill_grace_s``.
    A wall-time stop, a missing POTCAR or an executable that cannot start is not retried.
    """

    name = "vasp"

    def __init__(self, cfg: VaspCfg | None = None, *, max_retries: int = 2, max_force: float = 50.0,
                 reuse: bool = True, potcar_family: str = "potpaw_PBE", kill_grace_s: float = 10.0,
                 energy: str = "free"):
        super().__init__(max_retries=max_retries, max_force=max_force, reuse=reuse)
        self.cfg = cfg or VaspCfg()
        if not self.cfg.command:
            raise ValueError("dft.vasp.command is empty")
        self.energy = check_energy_kind(energy)
        self.potcar_family = potcar_family
        self.kill_grace_s = float(kill_grace_s)
        incar = {str(k).lower(): v for k, v in self.cfg.incar.items()}
        if int(incar.get("nsw") or 0) > 0:
            raise ValueError("VaspOracle labels single points: dft.vasp.incar.nsw must be 0")
        for key, value in (("nsw", 0), ("ibrion", -1), ("lwave", False), ("lcharg", False)):
            incar.setdefault(key, value)
        self.incar = incar

    def settings(self) -> dict:
        cfg = self.cfg.identity()
        for key in ("command", "walltime_s"):  # how it runs, not what it computes
            cfg.pop(key, None)
        return {"vasp": cfg, "incar": self.incar, "potcar_family": self.potcar_family,
                "energy": self.energy}

    # -- the ladder ----------------------------------------------------------------------
    def _steps(self) -> list[dict]:
        algo = str(self.incar.get("algo", "Normal")).lower()
        rank = _ALGO_RANK.get(algo, 1)
        steps = []
        if rank < 1:
            steps.append({"algo": "Normal"})
        if rank < 2:
            steps.append({"algo": "All"})
        steps.append({"amix": 0.1, "bmix": 0.01})
        steps.append({"nelm": 2 * int(self.incar.get("nelm") or _VASP_DEFAULT_NELM)})
        return steps

    def ladder(self, attempt: int) -> dict | None:
        steps = self._steps()
        if attempt > len(steps):
            return None
        out: dict = {}
        for step in steps[:attempt]:
            out.update(step)
        return out

    def incar_for(self, attempt: int) -> dict:
        """The INCAR parameters (lower-case keys) of attempt ``attempt``."""
        return {**self.incar, **(self.ladder(attempt) or {})}

    # -- running -------------------------------------------------------------------------
    def potcar_dir(self) -> Path:
        root = self.cfg.pp_path or os.environ.get("VASP_PP_PATH")
        if not root:
            raise AttemptFailed("input_error", "no POTCAR directory: set dft.vasp.pp_path or VASP_PP_PATH",
                                retry=False)
        fam = Path(root) / self.potcar_family
        return (fam if fam.is_dir() else Path(root)).resolve()

    def write_inputs(self, atoms: Atoms, workdir: Path, params: dict) -> None:
        from ase.calculators.vasp import Vasp

        calc = Vasp(directory=str(workdir), setups=self.cfg.setups, pp=str(self.potcar_dir()),
                    kpts=list(self.cfg.mesh(atoms)), gamma=True, **params)
        a = atoms.copy()
        a.calc = None
        calc.initialize(a)
        calc.write_input(a)

    def _execute(self, workdir: Path) -> int:
        cmd = [str(c) for c in self.cfg.command]
        with open(workdir / "vasp.out", "wb") as out, open(workdir / "vasp.err", "wb") as err:
            try:
                proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=err,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                raise AttemptFailed("launch_error", f"cannot start {cmd[0]!r}: {exc}", retry=False) from None
            try:
                return proc.wait(timeout=self.cfg.walltime_s)
            except subprocess.TimeoutExpired:
                self._stop(proc)
                raise AttemptFailed(
                    "walltime", f"{cmd[0]} ran past dft.vasp.walltime_s = {self.cfg.walltime_s:g} s and "
                                f"was stopped (output kept in {workdir})", retry=False) from None
            except BaseException:  # Ctrl-C or a signal handler: never leave VASP running
                self._stop(proc)
                raise

    def _stop(self, proc: subprocess.Popen) -> None:
        for sig, wait in ((signal.SIGTERM, self.kill_grace_s), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _run(self, atoms: Atoms, workdir: Path, changes: dict) -> Label:
        params = {**self.incar, **changes}
        try:
            self.write_inputs(atoms, workdir, params)
        except AttemptFailed:
            raise
        except Exception as err:  # noqa: BLE001 - ASE's writer raises RuntimeError etc.
            msg = " ".join(str(err).split())[:300]
            raise AttemptFailed("input_error", f"writing VASP inputs: {type(err).__name__}: {msg}",
                                retry=False) from None
        rc = self._execute(workdir)
        if rc != 0:
            raise AttemptFailed("nonzero_exit", f"{self.cfg.command[0]} exited with code {rc}{_hint(workdir)}")
        out, label = parse_vasprun(workdir / "vasprun.xml", energy=self.energy,
                                   default_nelm=int(params.get("nelm") or _VASP_DEFAULT_NELM))
        if label.status != "done":
            cat = category_of(label.error)
            raise AttemptFailed(cat, label.error.split(":", 1)[1].strip(), retry=cat != "parse_error")
        problem = _mismatch(atoms, out)
        if problem:
            raise AttemptFailed("output_mismatch", f"{problem} ({workdir})", retry=False)
        return label
