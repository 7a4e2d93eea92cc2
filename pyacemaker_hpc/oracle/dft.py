"""The DFT Calculator: VASP, GPAW or any ASE calculator behind the ``Oracle`` contract.

``make_dft_oracle(cfg)`` picks the backend named by
``distillation.step2_active_learning.dft_calculator`` and configures it from ``dft:``.
Every oracle's ``label(atoms, workdir)`` returns a Label and never raises for a
calculation problem: a failure is ``Label.failed("<category>: <reason>")`` (categories in
``FAILURE_CATEGORIES``; ``summarise_failures`` counts them). Each structure gets its own
``workdir``; a finished, checked result is cached there (``label.json``, keyed by the
structure's uid and the settings) so asking again never recomputes it.

Energy convention (all backends): ``Label.energy`` is the force-consistent free energy
(VASP TOTEN ``free energy``, GPAW's free energy) unless ``energy="sigma0"`` is passed to
an oracle: with smearing, the forces are the gradient of the free energy, and pacemaker's
own ``pace_collect`` stores the free energy.

Implementation: ``vasp.py``, ``gpaw_calc.py``, ``ase_calc.py``, ``importers.py``, with the
retry loop and checks in ``_common.py``.
"""
from __future__ import annotations

from ..config import Config
from ..core.interfaces import Oracle
from ._common import FAILURE_CATEGORIES, RetryingOracle, category_of, summarise_failures
from .ase_calc import AseOracle
from .gpaw_calc import GpawOracle
from .importers import import_labelled
from .vasp import VaspOracle, parse_vasp_dir, parse_vasprun

__all__ = ["make_dft_oracle", "AseOracle", "GpawOracle", "VaspOracle", "parse_vasp_dir",
           "parse_vasprun", "import_labelled", "summarise_failures", "category_of",
           "FAILURE_CATEGORIES", "RetryingOracle"]


def make_dft_oracle(cfg: Config, *, comm=None, energy: str | None = None) -> Oracle:
    """The oracle for ``cfg.dft_calculator`` ('vasp' | 'gpaw' | 'ase').

    ``comm``: an mpi4py communicator whose ranks compute each GPAW structure together
    (ignored by the other backends); ``energy``: 'free' or 'sigma0' (default: ``dft.energy``).
    """
    common = {"max_retries": cfg.dft.max_retries, "max_force": cfg.dft.max_force,
              "energy": energy or cfg.dft.energy}
    kind = cfg.dft_calculator
    if kind == "vasp":
        return VaspOracle(cfg.dft.vasp, **common)
    if kind == "gpaw":
        return GpawOracle(cfg.dft.gpaw, comm=comm, **common)
    if kind == "ase":
        return AseOracle(cfg.dft.ase.import_path, cfg.dft.ase.kwargs, **common)
    raise ValueError(f"unknown dft_calculator {kind!r} (vasp, gpaw or ase)")
