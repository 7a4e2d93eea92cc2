"""EMT that appends one line per finished calculation to a log file (and can be slowed
down): the tests count real calculator calls with it, e.g. to prove that a restart
repeats no finished DFT job."""
from __future__ import annotations

import hashlib
import os
import time

import numpy as np
from ase.calculators.emt import EMT


class CountingEMT(EMT):
    def __init__(self, log_file: str, sleep: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.log_file, self.sleep = log_file, sleep

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        kw = {} if system_changes is None else {"system_changes": system_changes}
        # one calculation gives everything, so one line is one structure
        super().calculate(atoms, ["energy", "forces", "stress"], **kw)
        if self.sleep:
            time.sleep(self.sleep)
        key = hashlib.sha1(np.round(self.atoms.positions, 6).tobytes()).hexdigest()[:12]
        with open(self.log_file, "a") as fh:
            fh.write(f"{key} {os.getpid()}\n")
