"""GPAW in-process, plane-wave mode (``dft.gpaw`` in config.yaml).

MPI: the installed GPAW is built without MPI in its C extension (``cgpaw.have_mpi`` is
False), and GPAW's default "serial" backend refuses to import under an MPI launcher
(mpiexec/srun set PMI_SIZE/PMIX_RANK). ``import_gpaw`` therefore selects GPAW's
``mpi4py`` backend when it sees a launcher, and every calculator gets an explicit
communicator: GPAW's serial communicator (one rank computes one structure, the default
of a DFT role group), or an mpi4py sub-communicator passed as ``comm`` (all its ranks
call ``label`` together; k-points are then shared out). Checked here under
``mpiexec -n 2``: a 2-rank sub-communicator gives the serial energy to 1e-11 eV.
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from ase import Atoms

from ..config import GpawCfg
from ..core.models import Label
from ._common import AttemptFailed, RetryingOracle
from .ase_calc import check_energy_kind, results_of

#: environment variables by which GPAW itself recognises an MPI launcher
_LAUNCHER_VARS = ("PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "I_MPI_MPIRUN")
_DEFAULT_MAXITER = 333  # GPAW 26's default
#: gentler mixers, tried after a larger iteration limit alone did not converge
_MIXERS = ({"name": "pulay", "beta": 0.05, "nmaxold": 5, "weight": 50.0},
           {"name": "pulay", "beta": 0.02, "nmaxold": 8, "weight": 100.0})


def import_gpaw():
    """Import gpaw so that it works both serially and on one rank of an mpirun job."""
    import gpaw

    if ("gpaw._broadcast_imports" not in sys.modules and gpaw.GPAW_MPI_BACKEND is None
            and any(v in os.environ for v in _LAUNCHER_VARS)):
        gpaw.GPAW_MPI_BACKEND = "mpi4py"
    # GPAW checks at import that ASE's world has its size; the ranks of this tool keep ASE
    # serial (parallel.environment.make_ase_serial), so GPAW imports against an ASE world
    # that is not yet initialised (no check), and ASE is serial again afterwards.
    import ase.parallel

    saved = ase.parallel.world.comm
    if isinstance(saved, ase.parallel.DummyMPI):
        ase.parallel.world.comm = None
    try:
        import gpaw.mpi  # noqa: F401 - fixes the backend now
    finally:
        ase.parallel.world.comm = saved
    return gpaw


@lru_cache(maxsize=None)
def _dedecut_per_atom(symbol: str, xc: str, setup_type: str, ecut: float) -> float:
    """dE/d(ecut) of one atom's PAW setup (dimensionless): the kinetic energy its pseudo
    partial waves keep above the cutoff, as old GPAW's ``estimate_dedecut``."""
    from ase.units import Ha
    from gpaw.setup import create_setup
    from gpaw.utilities.ekin import dekindecut, ekin

    G, de, _ = ekin(create_setup(symbol, xc, type=setup_type))
    return -float(dekindecut(G, de, ecut / Ha))


def pulay_stress(atoms: Atoms, ecut: float, xc: str = "PBE", setups="paw") -> np.ndarray:
    """The Pulay stress (eV/A^3, Voigt) to add to GPAW's plane-wave stress at ``ecut`` eV.

    A fixed cutoff means a basis that changes with the cell, which the stress misses:
    old GPAW added ``dedecut * 2/3 * ecut / V`` on the diagonal (``PW(dedecut="estimate")``),
    GPAW 26's new code does not. ``setups`` as GPAW takes it (a type, or a dict by symbol
    with ``"default"``). Checked against -dE/dV of fcc Au at 300 eV in the tests.
    """
    def kind(symbol: str) -> str:
        if isinstance(setups, dict):
            return str(setups.get(symbol, setups.get("default", "paw")))
        return str(setups)

    dedecut = sum(_dedecut_per_atom(s, xc, kind(s), float(ecut)) for s in atoms.get_chemical_symbols())
    return dedecut * 2.0 / 3.0 * float(ecut) / atoms.get_volume() * np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])


class GpawOracle(RetryingOracle):
    """PBE (or ``cfg.xc``) plane waves at ``cfg.ecut``, Gamma-centred Monkhorst-Pack
    k-points (``cfg.kpoint_mesh``, else from ``cfg.kpoint_density``: ASE's points per 2*pi/A), Fermi-Dirac
    smearing ``cfg.smearing_width``; ``cfg.extra`` is passed to GPAW last (it wins).

    Fallback ladder on SCF non-convergence (``KohnShamConvergenceError``): twice the
    iteration limit; then also a Pulay mixer with beta 0.05 (nmaxold 5, weight 50); then
    three times the limit with beta 0.02 (nmaxold 8, weight 100). The log of each attempt
    is ``gpaw.txt`` in the work directory (earlier attempts in ``attemptN/``).
    """

    name = "gpaw"

    def __init__(self, cfg: GpawCfg | None = None, *, max_retries: int = 2, max_force: float = 50.0,
                 reuse: bool = True, comm=None, energy: str = "free"):
        super().__init__(max_retries=max_retries, max_force=max_force, reuse=reuse)
        self.energy = check_energy_kind(energy)
        self.cfg = cfg or GpawCfg()
        gpaw = import_gpaw()
        self._comm = comm if comm is not None and comm.Get_size() > 1 else None
        if self._comm is None:
            self._gpaw_comm = gpaw.mpi.serial_comm
        else:
            if gpaw.GPAW_MPI_BACKEND != "mpi4py":
                raise ValueError("GpawOracle(comm=...) with more than one rank needs GPAW's mpi4py "
                                 "backend: set GPAW_MPI_BACKEND=mpi4py or run under mpirun/srun")
            from gpaw.mpi4pywrapper import MPI4PYWrapper

            self._gpaw_comm = MPI4PYWrapper(self._comm)

    def settings(self) -> dict:
        return {"gpaw": self.cfg.identity(), "energy": self.energy}

    def cache_settings(self, atoms: Atoms) -> dict:
        """The calculation as GPAW gets it (the resolved k-mesh, not the density that chose
        it): a finished calculation is reused whenever the same structure would be computed
        with the same parameters, e.g. after switching a density to the fixed mesh most cells
        already had."""
        return {"gpaw": self.parameters(atoms), "energy": self.energy}

    def parameters(self, atoms: Atoms) -> dict:
        """The GPAW keyword arguments for ``atoms`` (before any ladder change)."""
        params = {"mode": {"name": "pw", "ecut": float(self.cfg.ecut)}, "xc": self.cfg.xc,
                  "kpts": {"size": self.cfg.mesh(atoms), "gamma": True},
                  "occupations": {"name": "fermi-dirac", "width": float(self.cfg.smearing_width)}}
        params.update({k: v for k, v in self.cfg.extra.items() if k not in ("txt", "communicator")})
        return params

    def label(self, atoms: Atoms, workdir: str) -> Label:
        """The shared loop, then the Pulay stress (``cfg.pulay_stress``). The work-directory
        cache keeps GPAW's own stress, so switching the correction reuses every calculation."""
        lab = super().label(atoms, workdir)
        if not (lab.ok and lab.stress is not None and self.cfg.pulay_stress == "estimate"):
            return lab
        params = self.parameters(atoms)
        mode = params["mode"]
        if not (isinstance(mode, dict) and mode.get("name") == "pw"):
            return lab  # dft.gpaw.extra chose another mode: no plane-wave basis, no Pulay term
        try:
            extra = pulay_stress(atoms, mode.get("ecut", self.cfg.ecut), str(params["xc"]),
                                 params.get("setups", "paw"))
        except Exception as err:  # noqa: BLE001 - a setup without the data (norm-conserving, ghost)
            return Label.failed(f"calculator_error: Pulay stress estimate failed ({type(err).__name__}: "
                                f"{err}); set dft.gpaw.pulay_stress: none", lab.seconds)
        return replace(lab, stress=np.asarray(lab.stress, dtype=float) + extra)

    def ladder(self, attempt: int) -> dict | None:
        base = int(self.cfg.extra.get("maxiter") or _DEFAULT_MAXITER)
        steps = [{}, {"maxiter": 2 * base}, {"maxiter": 2 * base, "mixer": _MIXERS[0]},
                 {"maxiter": 3 * base, "mixer": _MIXERS[1]}]
        return steps[attempt] if attempt < len(steps) else None

    def _is_writer(self) -> bool:
        return self._comm is None or self._comm.Get_rank() == 0

    def _agree(self, obj):
        return obj if self._comm is None else self._comm.bcast(obj, root=0)

    def _run(self, atoms: Atoms, workdir: Path, changes: dict) -> Label:
        from gpaw import GPAW, KohnShamConvergenceError

        params = {**self.parameters(atoms), **changes}
        log = workdir / "gpaw.txt"
        calc = GPAW(**params, txt=str(log), communicator=self._gpaw_comm)
        a = atoms.copy()
        a.calc = calc
        try:
            energy, forces, stress = results_of(a, self.energy)
        except KohnShamConvergenceError as err:
            mixer = params.get("mixer", "GPAW default")
            kind = type(err).__name__
            raise AttemptFailed(
                "scf_not_converged",
                f"GPAW {kind}: no SCF convergence within maxiter={params.get('maxiter', _DEFAULT_MAXITER)} "
                f"(mixer {mixer}); log {log}") from None
        except Exception as err:  # noqa: BLE001 - deterministic: a ladder will not help
            raise AttemptFailed("calculator_error", f"GPAW {type(err).__name__}: {err}; log {log}",
                                retry=False) from None
        finally:
            a.calc = None
            del calc
        return Label(energy=energy, forces=forces, stress=stress)
