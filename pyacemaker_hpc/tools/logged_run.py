"""Run a training tool (pacemaker, mace_run_train) as a subprocess with its output in a
file, and log its progress meanwhile: fits take minutes to hours, and the job log should
say how far they are, not stay silent until they end."""
from __future__ import annotations

import logging
import re
import subprocess
import time
from pathlib import Path

log = logging.getLogger("pyacemaker_hpc")

#: how often a running fit reports (seconds)
EVERY_S = 30.0


def last_count(path: Path, pattern: re.Pattern, tail_bytes: int = 65536) -> int | None:
    """The last integer ``pattern`` (one group) finds in the end of the file."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - tail_bytes))
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    hits = pattern.findall(text)
    return int(hits[-1]) if hits else None


def run_with_progress(cmd: list[str], cwd: Path, env: dict, out_path: Path, timeout: float | None,
                      *, label: str, pattern: re.Pattern, total: int,
                      every_s: float = EVERY_S) -> int:
    """Run ``cmd`` (an argument list) in ``cwd`` with stdout+stderr in ``out_path``; every
    ``every_s`` log '<label>: <count>/<total>, elapsed, ETA' from the last ``pattern``
    match in the output. Returns the exit code; raises subprocess.TimeoutExpired (after
    killing the process) when ``timeout`` passes."""
    t0 = last = time.time()
    with open(out_path, "w") as fh:
        # unbuffered: a Python tool writing to a file otherwise holds its progress in a buffer
        proc = subprocess.Popen(cmd, cwd=cwd, env=dict(env, PYTHONUNBUFFERED="1"), stdout=fh,
                                stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                time.sleep(0.2)
                now = time.time()
                if timeout is not None and now - t0 > timeout:
                    proc.kill()
                    proc.wait()
                    raise subprocess.TimeoutExpired(cmd, timeout)
                if now - last >= every_s:
                    last = now
                    k = last_count(out_path, pattern)
                    if k:
                        eta = (now - t0) / k * max(total - k, 0)
                        log.info("%s: %d/%d, %.0f s elapsed, ETA %.0f s", label, k, total, now - t0, eta)
                    else:
                        log.info("%s: running, %.0f s elapsed", label, now - t0)
        except BaseException:
            if proc.poll() is None:  # SIGTERM/KeyboardInterrupt in this process: no orphan fit
                proc.kill()
                proc.wait()
            raise
    return proc.returncode
