"""EMT that appends one line per finished calculation to a log file (and can be slowed
down): the tests count real calculator calls with it, e.g. to prove that a restart
repeats no finished DFT job.

``crash_file`` (optional) makes the calculator kill its own process, the way a segfaulting
DFT code would, for one structure: the first one it is asked for, whose key it writes to
``crash_file`` (a file that already holds a key picks that structure). ``crash_mode``:
``"exit"`` = ``os._exit(1)``, ``"sigkill"`` = SIGKILL to itself. ``crash_skip``: the pick
waits until ``log_file`` holds that many finished calculations. Each crash first appends
``<key> <pid>`` to ``<crash_file>.log``. Without ``crash_file`` nothing changes."""
from __future__ import annotations

import hashlib
import os
import signal
import time

import numpy as np
from ase.calculators.emt import EMT


class CountingEMT(EMT):
    def __init__(self, log_file: str, sleep: float = 0.0, crash_file: str | None = None,
                 crash_mode: str = "exit", crash_skip: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.log_file, self.sleep = log_file, sleep
        self.crash_file, self.crash_mode, self.crash_skip = crash_file, crash_mode, int(crash_skip)

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        kw = {} if system_changes is None else {"system_changes": system_changes}
        # one calculation gives everything, so one line is one structure
        super().calculate(atoms, ["energy", "forces", "stress"], **kw)
        if self.sleep:
            time.sleep(self.sleep)
        key = hashlib.sha1(np.round(self.atoms.positions, 6).tobytes()).hexdigest()[:12]
        if self.crash_file and key == self._crash_key(key):
            with open(self.crash_file + ".log", "a") as fh:
                fh.write(f"{key} {os.getpid()}\n")
            if self.crash_mode == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(1)
        with open(self.log_file, "a") as fh:
            fh.write(f"{key} {os.getpid()}\n")

    def _crash_key(self, key: str) -> str:
        try:
            with open(self.crash_file) as fh:
                chosen = fh.read().strip()
        except FileNotFoundError:
            chosen = ""
        if not chosen:
            try:
                with open(self.log_file) as fh:
                    n_done = sum(1 for _ in fh)
            except FileNotFoundError:
                n_done = 0
            if n_done < self.crash_skip:
                return ""
            with open(self.crash_file, "w") as fh:
                fh.write(key + "\n")
            chosen = key
        return chosen
