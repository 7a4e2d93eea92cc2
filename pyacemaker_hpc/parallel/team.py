"""Who does what: rank 0 coordinates (and alone writes the campaign); the other ranks are
split into role groups sized by the config's ``parallel:`` section.

Groups may overlap (the steps run one after another, so a rank serving several roles is
never asked for two things at once); a 2-rank job has one worker doing everything; with no
worker at all (no mpirun) rank 0 runs every task itself. The ``train`` group gets the last
worker rank(s), the one the job script pins to the GPU when there is one; its
``Comm.Split`` colour is the rank's first role.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

ROLES = ("descriptor", "dft", "mace", "train")


def _world():
    """The MPI world communicator, or None when mpi4py/MPI is not usable or not launched."""
    if os.environ.get("PYACEMAKER_NO_MPI"):
        return None
    launched = any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                                             "PMIX_RANK", "SLURM_STEP_ID", "HYDRA_CONTROL_FD"))
    if not launched:
        return None
    try:
        from mpi4py import MPI
    except Exception:  # noqa: BLE001 - no MPI library: run serially
        return None
    return MPI.COMM_WORLD


@dataclass
class Team:
    comm: object | None  # mpi4py communicator or None (serial)
    rank: int
    size: int
    groups: dict[str, list[int]] = field(default_factory=dict)
    group_comm: object | None = None  # this rank's role-group communicator (Comm.Split)

    @property
    def serial(self) -> bool:
        return self.size == 1

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    def roles_of(self, rank: int) -> list[str]:
        return [r for r, ranks in self.groups.items() if rank in ranks]

    @classmethod
    def create(cls, sizes: dict[str, int], comm=None) -> "Team":
        comm = comm if comm is not None else _world()
        if comm is None or comm.Get_size() == 1:
            return cls(comm=comm, rank=0, size=1, groups={r: [0] for r in ROLES})
        from .environment import make_ase_serial

        make_ase_serial()
        rank, size = comm.Get_rank(), comm.Get_size()
        groups = assign_groups(sizes, list(range(1, size)))
        primary = next((i for i, r in enumerate(ROLES) if rank in groups[r]), len(ROLES))
        group_comm = comm.Split(color=primary if rank else len(ROLES) + 1, key=rank)
        return cls(comm=comm, rank=rank, size=size, groups=groups, group_comm=group_comm)


def assign_groups(sizes: dict[str, int], workers: list[int]) -> dict[str, list[int]]:
    """Worker ranks of each role.

    The train role takes the last ``train`` workers (the GPU ranks). A size of 0 for
    descriptor, dft or mace means every worker: the steps run one after another, so ranks
    that serve several roles are never idle while others work. A positive size takes that
    many workers, cycling through them so roles spread over different ranks.
    """
    if not workers:
        return {r: [0] for r in ROLES}
    n_train = max(1, int(sizes.get("train", 1)))
    groups: dict[str, list[int]] = {"train": workers[-n_train:]}
    pos = 0
    for role in ("descriptor", "dft", "mace"):
        want = int(sizes.get(role, 0))
        if want <= 0 or want >= len(workers):
            groups[role] = list(workers)
            continue
        chosen = [workers[(pos + i) % len(workers)] for i in range(want)]
        pos += want
        groups[role] = sorted(set(chosen))
    return groups
