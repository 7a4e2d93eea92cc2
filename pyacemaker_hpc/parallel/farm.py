"""A task farm over a role group: one task at a time per worker, results to rank 0.

DFT jobs differ in cost by orders of magnitude, so static slicing idles ranks; here a worker
gets its next task the moment it returns a result, and rank 0 commits each result at once
(``on_result``), so a crash loses at most the tasks in flight. Waiting is done by polling
with short sleeps (``Iprobe``), so an idle rank does not spin a core, and SIGTERM is noticed
between polls.

Tasks are ``(key, function, args)`` with a module-level function (pickled by reference).
Given a ``cost`` estimate per key, tasks go out longest first (LPT): handing out a long job
last leaves the other ranks idle while it runs; longest first keeps the makespan near
max(longest job, total / ranks).
"""
from __future__ import annotations

import logging
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .team import Team

log = logging.getLogger(__name__)
_TASK, _RESULT, _STOP = 11, 12, 13
POLL_S = 0.01
#: after SIGTERM, how long rank 0 waits for the items in flight before giving up on them
#: (Slurm's KillWait defaults to 30 s)
GRACE_S = 20.0


class Terminated(RuntimeError):
    """SIGTERM/SIGINT arrived: stop after committing what is finished."""


@dataclass
class TaskFailed:
    """What a worker sends back when a task raised: the task's key and the traceback."""

    key: Any
    error: str


_stop_requested = False
_stop_time = 0.0


def install_signal_handlers() -> None:
    """SIGTERM (Slurm's first signal) and SIGUSR1 (early warning) request a clean stop."""

    def _handler(signum, _frame):
        global _stop_requested, _stop_time
        if not _stop_requested:
            _stop_time = time.time()
        _stop_requested = True
        log.warning("signal %s received: finishing the items in flight, then stopping", signum)

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _handler)


def stop_requested() -> bool:
    return _stop_requested


def check_stop() -> None:
    if _stop_requested:
        raise Terminated("stopped by signal; the campaign holds everything finished so far")


def _call(fn: Callable, args: tuple) -> Any:
    return fn(*args)


class Farm:
    """Coordinator side of the farm (rank 0); ``serve`` is the worker side."""

    def __init__(self, team: Team):
        self.team = team

    # -------------------------------------------------------------- coordinator
    def map(self, role: str, tasks: Iterable[tuple[Any, Callable, tuple]],
            on_result: Callable[[Any, Any], None], *, label: str = "",
            cost: Callable[[Any], float] | None = None) -> int:
        """Run ``tasks`` on the ranks of ``role``; call ``on_result(key, result)`` on rank 0
        as each finishes (a raised exception comes back as TaskFailed). ``cost(key)``, when
        given, is an estimate of each task's run time: tasks are handed out longest first.
        Returns the count."""
        tasks = list(tasks)
        if cost is not None:
            tasks.sort(key=lambda t: -cost(t[0]))  # stable: equal costs keep their order
        progress = Progress(label or role, len(tasks))
        workers = [r for r in self.team.groups.get(role, []) if r != 0]
        if self.team.serial or not workers:
            for key, fn, args in tasks:
                check_stop()
                try:
                    res = fn(*args)
                except Exception:  # noqa: BLE001 - reported to the caller as data
                    res = TaskFailed(key, traceback.format_exc())
                on_result(key, res)
                progress.tick()
            return len(tasks)

        from mpi4py import MPI

        comm = self.team.comm
        queue = list(reversed(tasks))
        busy: dict[int, Any] = {}
        idle = list(workers)
        done = 0
        status = MPI.Status()
        def dispatch(w: int) -> None:
            key, fn, args = queue.pop()
            comm.send((key, fn, args), dest=w, tag=_TASK)
            busy[w] = key

        poll = _Backoff()
        while queue or busy:
            while idle and queue and not _stop_requested:
                dispatch(idle.pop(0))
            if _stop_requested and (not busy or time.time() - _stop_time > GRACE_S):
                check_stop()
            if comm.Iprobe(source=MPI.ANY_SOURCE, tag=_RESULT, status=status):
                src = status.Get_source()
                key, res = comm.recv(source=src, tag=_RESULT)
                busy.pop(src, None)
                if queue and not _stop_requested:
                    dispatch(src)  # the worker gets its next task before rank 0 commits
                else:
                    idle.append(src)
                on_result(key, res)
                done += 1
                progress.tick()
                poll.reset()
            else:
                poll.wait()
        check_stop()
        return done

    def run_one(self, role: str, fn: Callable, *args) -> Any:
        """Run a single task on the first rank of ``role`` (e.g. a fit on the train rank)."""
        out = {}
        self.map(role, [("one", fn, args)], lambda k, r: out.__setitem__(k, r), label=fn.__name__)
        res = out["one"]
        if isinstance(res, TaskFailed):
            raise RuntimeError(f"{fn.__name__} failed on a {role} rank:\n{res.error}")
        return res

    def shutdown(self) -> None:
        if self.team.serial:
            return
        for r in range(1, self.team.size):
            self.team.comm.send(None, dest=r, tag=_STOP)

    # -------------------------------------------------------------- worker
    def serve(self) -> None:
        """Worker loop: take a task, run it, send the result; until rank 0 says stop."""
        from mpi4py import MPI

        comm = self.team.comm
        status = MPI.Status()
        poll = _Backoff()
        while True:
            if not comm.Iprobe(source=0, tag=MPI.ANY_TAG, status=status):
                poll.wait()
                continue
            poll.reset()
            tag = status.Get_tag()
            msg = comm.recv(source=0, tag=tag)
            if tag == _STOP:
                return
            key, fn, args = msg
            try:
                res = fn(*args)
            except Exception:  # noqa: BLE001 - sent to rank 0 as data
                res = TaskFailed(key, traceback.format_exc())
            comm.send((key, res), dest=0, tag=_RESULT)


class _Backoff:
    """Sleep between polls: 0.5 ms at first, doubling to POLL_S, so a reply that is
    already there costs no full sleep (MPICH's first Iprobe often misses a message that
    has arrived) and a long wait does not spin a core."""

    def __init__(self):
        self.dt = 0.0005

    def reset(self) -> None:
        self.dt = 0.0005

    def wait(self) -> None:
        time.sleep(self.dt)
        self.dt = min(self.dt * 2, POLL_S)


class Progress:
    """Log lines with counts and ETA for long steps (rank 0 only)."""

    def __init__(self, label: str, total: int, every_s: float = 10.0):
        self.label, self.total, self.every = label, total, every_s
        self.n, self.t0, self.last = 0, time.time(), 0.0

    def tick(self) -> None:
        self.n += 1
        now = time.time()
        if self.total > 1 and (now - self.last > self.every or self.n == self.total):
            rate = self.n / max(now - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            log.info("%s: %d/%d done, %.1f s elapsed, ETA %.0f s", self.label, self.n, self.total,
                     now - self.t0, eta)
            self.last = now
