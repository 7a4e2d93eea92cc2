"""Environment for programs a rank starts (mace_run_train, pacemaker).

A child that inherits the launcher's variables (PMI_*, HYDRA_*, OMPI_*...) believes it is
an MPI rank itself and may try to join the job's MPI world, hanging it: MPICH's process
manager never answers a second PMI client on the same slot. Training children are plain
serial programs, so they get an environment without them. (VASP, started through
``srun``, keeps the SLURM_* variables it needs.)
"""
from __future__ import annotations

import os
from contextlib import contextmanager

MPI_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPIR_", "I_MPI_", "MPI_LOCAL")


def serial_child_env(base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    for k in list(env):
        if k.startswith(MPI_PREFIXES):
            del env[k]
    return env


@contextmanager
def serial_children():
    """Within the block, subprocesses of this rank start without MPI launcher variables.

    Only those variables are taken out and put back: anything else the block sets (mace
    sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD when imported) stays.
    """
    removed = {k: v for k, v in os.environ.items() if k.startswith(MPI_PREFIXES)}
    for k in removed:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(removed)


def make_ase_serial() -> None:
    """Tell ASE that every rank is a world of its own.

    ASE's ``ase.io.read/write`` (and paropen, parprint) are MPI-aware: under mpirun they run
    on ASE's rank 0 and broadcast, so a worker rank writing a file alone would wait forever
    for rank 0. Here each rank does its own I/O on its own files, which is ASE's serial mode.
    """
    import ase.parallel

    ase.parallel.world.comm = ase.parallel.DummyMPI()
