"""Any ASE calculator as an oracle, named by import path (``dft.ase`` in config.yaml)."""
from __future__ import annotations

import importlib
from pathlib import Path

from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from ..core.models import Label
from ._common import RetryingOracle


def import_object(import_path: str):
    """``'package.module.Name'`` -> the object; ValueError naming the path if absent."""
    module, _, attr = import_path.rpartition(".")
    if not module:
        raise ValueError(f"expected 'module.Class', got {import_path!r}")
    if module.split(".")[0] == "gpaw":  # gpaw needs its MPI backend chosen first
        from .gpaw_calc import import_gpaw

        import_gpaw()
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {import_path!r}: {err}") from None


ENERGY_KINDS = ("free", "sigma0")


def check_energy_kind(energy: str) -> str:
    if energy not in ENERGY_KINDS:
        raise ValueError(f"energy must be one of {ENERGY_KINDS}, got {energy!r}")
    return energy


def results_of(atoms: Atoms, energy: str = "free") -> tuple[float, object, object]:
    """(energy, forces, stress) from an Atoms with a calculator attached.

    ``energy="free"`` (default): the force-consistent free energy when the calculator has
    one (VASP TOTEN, GPAW's free energy); with electronic smearing it is the energy whose
    gradient the forces are, and what pacemaker's ``pace_collect`` stores. ``"sigma0"``:
    ASE's ``energy`` (VASP energy(sigma->0), GPAW's extrapolated energy, the value of a
    plain ``get_potential_energy()``). Stress only for fully periodic cells and only when
    the calculator provides it (else None).
    """
    if energy == "free":
        try:
            e = atoms.get_potential_energy(force_consistent=True)
        except PropertyNotImplementedError:
            e = atoms.get_potential_energy()
    else:
        e = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = None
    if atoms.pbc.all():
        try:
            stress = atoms.get_stress(voigt=True)
        except (PropertyNotImplementedError, NotImplementedError):
            stress = None
    return float(e), forces, stress


class AseOracle(RetryingOracle):
    """Labels with ``import_path(**kwargs)``, a fresh calculator per structure.

    Retries (up to ``max_retries``) repeat the same call: they help calculators that
    fail transiently (file-based codes, licence servers); NaN results and huge forces
    are not retried.
    """

    def __init__(self, import_path: str = "ase.calculators.emt.EMT", kwargs: dict | None = None, *,
                 max_retries: int = 2, max_force: float = 50.0, reuse: bool = True,
                 name: str | None = None, energy: str = "free"):
        super().__init__(max_retries=max_retries, max_force=max_force, reuse=reuse)
        self.energy = check_energy_kind(energy)
        self.import_path = import_path
        self.kwargs = dict(kwargs or {})
        self._factory = import_object(import_path)
        self.name = name or f"ase-{import_path.rpartition('.')[2].lower()}"

    def settings(self) -> dict:
        return {"import_path": self.import_path, "kwargs": self.kwargs, "energy": self.energy}

    def _run(self, atoms: Atoms, workdir: Path, changes: dict) -> Label:
        calc = self._factory(**self.kwargs)
        if "directory" not in self.kwargs and hasattr(calc, "directory"):
            calc.directory = str(workdir)  # file-based calculators write here
        a = atoms.copy()
        a.calc = calc
        energy, forces, stress = results_of(a, self.energy)
        return Label(energy=energy, forces=forces, stress=stress)
