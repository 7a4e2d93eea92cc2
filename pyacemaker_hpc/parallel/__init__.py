"""Rank roles, communicator split and the task farm (serial fallback without mpirun)."""
from .farm import Farm, TaskFailed, Terminated
from .team import ROLES, Team

__all__ = ["Farm", "Team", "ROLES", "TaskFailed", "Terminated"]
