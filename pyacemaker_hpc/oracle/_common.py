"""What every DFT oracle shares: failure reasons, result checks, the retry loop, and the
per-structure result cache that keeps a restart from paying twice for one calculation.

A failure is never an exception: ``label`` returns ``Label.failed(reason)`` where the
reason reads ``"<category>: <what happened>"``. The category (first word) is one of
``FAILURE_CATEGORIES``; ``summarise_failures`` counts them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
from ase import Atoms

from ..core.models import DONE, FAILED, Label, LabelledSet, structure_uid

#: category -> meaning (the first word of every failure reason)
FAILURE_CATEGORIES = {
    "scf_not_converged": "the electronic SCF hit its iteration limit (VASP NELM, GPAW maxiter)",
    "nonzero_exit": "the DFT executable exited with a non-zero code",
    "walltime": "the DFT run exceeded its wall-time limit and was stopped",
    "missing_output": "the run produced no result file (no vasprun.xml)",
    "truncated_output": "the result file ends early: the run died before finishing",
    "parse_error": "the result file exists but could not be read",
    "output_mismatch": "the result belongs to a different structure than the one asked for",
    "non_finite": "energy, forces or stress contain NaN or inf",
    "force_too_large": "a force exceeds dft.max_force (overlapping atoms, broken structure)",
    "input_error": "inputs could not be written (missing POTCAR, bad INCAR value)",
    "launch_error": "the DFT executable could not be started",
    "calculator_error": "the calculator raised an exception",
    "io_error": "the work directory could not be created or written",
    "process_crash": "the process running the calculation died with it in flight too often "
                     "(dft.max_retries + 1 times): the job ended each time; not run again",
}

CACHE_FILE = "label.json"
#: written before a calculation starts, removed when it returns (result or failure): found
#: at the next start, it means the process died with the calculation in flight
INFLIGHT_FILE = "calculation.inflight"
#: how many times that happened (one integer); reset by a calculation that returns
CRASH_COUNT_FILE = "process_crashes"
#: files the archiver leaves in place (POTCAR is an input that never changes)
_KEEP = {CACHE_FILE, "POTCAR", INFLIGHT_FILE, CRASH_COUNT_FILE}
#: big restart files deleted rather than archived: a retry starts from scratch
_DROP = {"WAVECAR", "CHG", "CHGCAR", "WAVEDER"}


def estimated_cost(atoms: Atoms, kpoint_density: float | None = None, *,
                   mesh: tuple[int, int, int] | None = None) -> float:
    """Relative cost of a plane-wave DFT calculation, for ordering jobs (not a prediction of
    seconds): (number of k-points) x atoms^3, the k-points the oracle's ``mesh`` or, from
    ``kpoint_density``, as the oracles choose them. Cubic in size is the diagonalisation term
    that dominates beyond a few atoms; the k-point factor makes a small cell with a dense mesh
    cost what it does."""
    nk = 1
    if mesh is not None:
        nk = int(np.prod(mesh))
    elif kpoint_density and atoms.pbc.any():
        from ase.calculators.calculator import kpts2sizeandoffsets

        size, _ = kpts2sizeandoffsets(density=kpoint_density, gamma=True, atoms=atoms)
        nk = int(np.prod(size))
    return float(nk) * len(atoms) ** 3


class AttemptFailed(Exception):
    """One attempt failed; ``retry`` says whether the next rung of the ladder may help."""

    def __init__(self, category: str, message: str, retry: bool = True):
        super().__init__(f"{category}: {message}")
        self.category, self.message, self.retry = category, message, retry

    @property
    def reason(self) -> str:
        return f"{self.category}: {self.message}"


def category_of(reason: str) -> str:
    """The category of a failure reason: its first word (before ':' or a space)."""
    head = (reason or "").strip().split(":", 1)[0].split()
    return head[0] if head else "unknown"


def check_result(energy, forces, stress, max_force: float) -> AttemptFailed | None:
    """A finished calculation's numbers are usable, or the reason they are not."""
    forces = None if forces is None else np.asarray(forces, dtype=float)
    if energy is None or not np.isfinite(energy):
        return AttemptFailed("non_finite", f"energy is {energy}", retry=False)
    if forces is None:
        return AttemptFailed("non_finite", "no forces", retry=False)
    if not np.all(np.isfinite(forces)):
        bad = np.argwhere(~np.isfinite(forces))[:, 0]
        return AttemptFailed("non_finite", f"forces on atoms {sorted(set(bad.tolist()))[:5]} are not finite",
                             retry=False)
    if stress is not None and not np.all(np.isfinite(stress)):
        return AttemptFailed("non_finite", "stress is not finite", retry=False)
    fmax = float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0
    if fmax > max_force:
        i = int(np.argmax(np.linalg.norm(forces, axis=1)))
        return AttemptFailed("force_too_large",
                             f"max |F| = {fmax:.1f} eV/A on atom {i} > dft.max_force = {max_force:g} eV/A",
                             retry=False)
    return None


def summarise_failures(labels: Iterable[Label] | LabelledSet) -> dict[str, int]:
    """Count failed labels by category (first word of the reason), most frequent first.

    A DONE label whose numbers are not finite counts as ``non_finite``.
    """
    if isinstance(labels, LabelledSet):
        labels = labels.labels
    counts: Counter[str] = Counter()
    for lab in labels:
        if lab.status == FAILED:
            counts[category_of(lab.error)] += 1
        elif not lab.ok:
            counts["non_finite"] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def archive_outputs(workdir: Path, prefix: str) -> Path | None:
    """Move the files of a finished (failed or interrupted) run into ``<prefix>N/``.

    POTCAR and the result cache stay; WAVECAR/CHG/CHGCAR are deleted (large, and a retry
    must not restart from the failed run's wavefunctions). Returns the folder, or None
    when there was nothing to keep.
    """
    files = [p for p in workdir.iterdir() if p.is_file() and p.name not in _KEEP]
    for p in [p for p in files if p.name in _DROP]:
        p.unlink(missing_ok=True)
    files = [p for p in files if p.name not in _DROP]
    if not files:
        return None
    n = 1
    while (workdir / f"{prefix}{n}").exists():
        n += 1
    dest = workdir / f"{prefix}{n}"
    dest.mkdir()
    for p in files:
        shutil.move(str(p), str(dest / p.name))
    return dest


def _settings_hash(settings: dict) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class RetryingOracle:
    """The shared ``label`` loop: cache check, attempts along a fallback ladder, checks.

    Subclasses give ``name``, ``settings()`` (what decides the numbers: it keys the
    cache), ``ladder(attempt)`` (the parameter changes of attempt ``k``, None when the
    ladder is exhausted) and ``_run(atoms, workdir, changes)`` returning a Label or
    raising ``AttemptFailed``.

    ``workdir`` is this structure's own directory: the oracle writes its inputs, outputs
    and ``label.json`` there and moves earlier runs' files into ``attemptN/`` (a failed
    attempt before a retry) or ``previousN/`` (files found from an interrupted run).
    """

    name = "dft"

    def __init__(self, *, max_retries: int = 2, max_force: float = 50.0, reuse: bool = True):
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.max_retries = int(max_retries)
        self.max_force = float(max_force)
        self.reuse = bool(reuse)

    # -- to be provided by subclasses ----------------------------------------------------
    def settings(self) -> dict:
        raise NotImplementedError

    def ladder(self, attempt: int) -> dict | None:
        """Parameter changes for attempt ``attempt`` (0 = as configured)."""
        return {}

    def _run(self, atoms: Atoms, workdir: Path, changes: dict) -> Label:
        raise NotImplementedError

    # -- hooks for oracles that run one calculation on several ranks ---------------------
    def _is_writer(self) -> bool:
        return True

    def _agree(self, obj):
        return obj

    # -- the cache -----------------------------------------------------------------------
    def cache_settings(self, atoms: Atoms) -> dict:
        """What decides this structure's numbers (it keys the work-directory cache): the
        oracle's settings, unless an oracle resolves them per structure (GPAW's k-mesh)."""
        return self.settings()

    def _cache_key(self, atoms: Atoms) -> dict:
        return {"oracle": self.name, "uid": structure_uid(atoms),
                "settings": _settings_hash(self.cache_settings(atoms))}

    def _load_cache(self, workdir: Path, atoms: Atoms) -> Label | None:
        path = workdir / CACHE_FILE
        if not (self.reuse and path.is_file()):
            return None
        try:
            data = json.loads(path.read_text())
            if any(data.get(k) != v for k, v in self._cache_key(atoms).items()):
                return None
            stress = data.get("stress")
            lab = Label(energy=float(data["energy"]), forces=np.asarray(data["forces"], dtype=float),
                        stress=None if stress is None else np.asarray(stress, dtype=float),
                        status=DONE, seconds=float(data.get("seconds", 0.0)))
            return lab if lab.ok and lab.forces.shape == (len(atoms), 3) else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save_cache(self, workdir: Path, atoms: Atoms, label: Label) -> None:
        data = dict(self._cache_key(atoms), energy=float(label.energy),
                    forces=np.asarray(label.forces).tolist(),
                    stress=None if label.stress is None else np.asarray(label.stress).tolist(),
                    seconds=label.seconds)
        tmp = workdir / (CACHE_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, workdir / CACHE_FILE)
        except OSError:
            pass  # the cache is a convenience; the campaign file is the record

    # -- crash markers -------------------------------------------------------------------
    @staticmethod
    def _count_process_crash(workdir: Path) -> int:
        """How many times a process died with this calculation in flight (the marker left
        behind by the last one is counted here, once, and removed)."""
        count_file = workdir / CRASH_COUNT_FILE
        try:
            n = int(count_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            n = 0
        marker = workdir / INFLIGHT_FILE
        if marker.exists():
            n += 1
            tmp = workdir / (CRASH_COUNT_FILE + ".tmp")
            tmp.write_text(f"{n}\n")
            os.replace(tmp, count_file)  # counted before the marker goes: a kill here over-counts by none
            marker.unlink(missing_ok=True)
        return n

    @staticmethod
    def _mark_inflight(workdir: Path) -> None:
        marker = workdir / INFLIGHT_FILE
        marker.write_text(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

    @staticmethod
    def _clear_markers(workdir: Path) -> None:
        try:
            (workdir / INFLIGHT_FILE).unlink(missing_ok=True)
            (workdir / CRASH_COUNT_FILE).unlink(missing_ok=True)
        except OSError:
            pass

    # -- the contract --------------------------------------------------------------------
    def label(self, atoms: Atoms, workdir: str) -> Label:
        """Label one structure; every calculation problem comes back as a FAILED Label.

        A result found in ``workdir/label.json`` for the same structure and settings is
        returned as it is (its ``seconds`` are those of the original calculation).

        A calculation that kills its own process (a segfaulting code, the OOM killer) ends
        the whole MPI job, and a re-submitted job would run it again and die again. So a
        marker (``calculation.inflight``) is written before the calculation and removed when
        it returns; a marker found at the next start is counted in ``process_crashes``, and
        after ``max_retries + 1`` such deaths the structure comes back as
        ``Label.failed("process_crash: ...")`` without running (the counter is then reset,
        so ``retry_failed_on_restart`` gets a fresh series). A job killed from outside while
        the calculation ran (walltime, scancel) counts the same way: nothing in the work
        directory tells the two apart.
        """
        t0 = time.perf_counter()
        wd = Path(workdir)
        writer = self._is_writer()
        try:
            if writer:
                wd.mkdir(parents=True, exist_ok=True)
            cached = self._agree(self._load_cache(wd, atoms) if writer else None)
            if cached is not None:
                if writer:
                    self._clear_markers(wd)
                return cached
            crashes = self._agree(self._count_process_crash(wd) if writer else None)
            if crashes >= self.max_retries + 1:
                if writer:
                    self._clear_markers(wd)
                return Label.failed(
                    f"process_crash: the process running this calculation died {crashes} times with it "
                    f"in flight (each time ending the job); not run again (dft.max_retries = "
                    f"{self.max_retries}); files of the attempts in {wd}/previous*", time.perf_counter() - t0)
            if writer:
                archive_outputs(wd, "previous")
                self._mark_inflight(wd)
        except OSError as err:
            return Label.failed(f"io_error: work directory {wd}: {err}", time.perf_counter() - t0)
        # (_attempts turns every Exception into a failed label: only a dying process, or
        # SystemExit/KeyboardInterrupt on the way to one, leaves the marker behind)
        label = self._attempts(atoms, wd, writer, t0)
        if writer:
            self._clear_markers(wd)
        return label

    def _attempts(self, atoms: Atoms, wd: Path, writer: bool, t0: float) -> Label:
        """The fallback ladder: attempts until one passes the checks or none is left."""
        history: list[AttemptFailed] = []
        for attempt in range(self.max_retries + 1):
            changes = self.ladder(attempt)
            if changes is None:  # nothing left to try
                break
            try:
                if attempt > 0 and writer:
                    archive_outputs(wd, "attempt")
                label = self._run(atoms, wd, changes)
                failure = check_result(label.energy, label.forces, label.stress, self.max_force)
            except AttemptFailed as f:
                failure = f
            except OSError as err:
                failure = AttemptFailed("io_error", f"{type(err).__name__}: {err}")
            except Exception as err:  # noqa: BLE001 - a calculator's error is a failed label
                failure = AttemptFailed("calculator_error", f"{type(err).__name__}: {err}".strip())
            if failure is None:
                label.seconds = time.perf_counter() - t0
                if writer:
                    self._save_cache(wd, atoms, label)
                return label
            history.append(failure)
            if not failure.retry:
                break
        if not history:
            return Label.failed("calculator_error: no attempt was made (empty fallback ladder)")
        reason = history[-1].reason
        if len(history) > 1:
            reason += f" [after {len(history)} attempts: {', '.join(f.category for f in history)}]"
        return Label.failed(reason[:2000], time.perf_counter() - t0)
