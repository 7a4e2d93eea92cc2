"""Trainers: Pacemaker/ACE fits, delta learning onto DFT, extrapolation grades.

python-ace is imported lazily (inside the functions), so importing this package is cheap.
"""
from .active_set import extrapolation_grades
from .delta import delta_fit
from .pacemaker import (PacemakerError, PacemakerTrainer, ace_calculator, predict,
                        reference_energies, to_dataframe)

__all__ = ["PacemakerError", "PacemakerTrainer", "ace_calculator", "delta_fit",
           "extrapolation_grades", "predict", "reference_energies", "to_dataframe"]
