"""The HDF5 campaign file: every intermediate of a run, and the only module that imports h5py.

Why it is built this way: HDF5 has no journal, and a process killed while writing can leave
a file that will not open. So the live file is never written in place. Each commit
(``transaction``) copies the file, writes into the copy, fsyncs it, hard-links the current
file to ``<path>.prev`` and atomically renames the copy over ``<path>``. A kill at any
instant leaves either the old or the new complete file; readers (h5py, another shell) can
open ``<path>`` at any time because it only ever changes by rename. Commits are per item for
DFT (hours each) and per batch for cheap steps. A lock file (``<path>.lock``, flock) keeps a
second job out and vanishes with its holder, however it dies.

Layout (documented in the README):
  /                       attrs format_version, package_version, config_yaml, config_sha256
  /steps/<step>           attrs status, started, finished, inputs_sha256, outputs_sha256,
                          n_done, n_total, error, seconds
  /structures/<set>/      numbers, positions, offsets, cell, pbc, uid, provenance
  /labels/<set>/<source>/ energy, forces (same offsets), stress, status, error, seconds
  /descriptors/<set>      (n, d) float array, attrs kind
  /uncertainty/<set>/     energy_std, force_std
  /models/<name>/<suffix> the model file's bytes; attrs kind, sha256, metrics (JSON)
  /metrics/<name>         JSON text
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
from ase import Atoms

from . import __version__
from .core.models import DONE, FAILED, PENDING, Label, LabelledSet, TrainedModel, Uncertainty, structure_uid

FORMAT_VERSION = 1
_STR = h5py.string_dtype()


class CampaignError(RuntimeError):
    """The campaign file cannot be used; the message says why and what to do."""


class CampaignLocked(CampaignError):
    """Another live process holds the campaign."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Campaign:
    """One campaign file, opened for writing by exactly one process (rank 0).

    ``Campaign(path)`` takes the lock and creates the file if needed; ``Campaign(path,
    readonly=True)`` only reads (no lock, safe while a job runs).
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, config_yaml: str | None = None):
        self.path = Path(path)
        self.readonly = readonly
        self._lock_fd: int | None = None
        self._tx: h5py.File | None = None
        if readonly:
            if not self.path.is_file():
                raise CampaignError(f"campaign file not found: {self.path}")
            self._check_opens()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        if self.path.exists():
            self._check_opens()
        else:
            with h5py.File(self._tmp, "w", libver="latest") as f:
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["package_version"] = __version__
                for g in ("steps", "structures", "labels", "descriptors", "uncertainty", "models", "metrics"):
                    f.create_group(g)
            self._publish()
        if config_yaml is not None:
            with self.transaction() as f:
                f.attrs["config_yaml"] = config_yaml
                f.attrs["config_sha256"] = sha256_text(config_yaml)

    # ------------------------------------------------------------------ file safety
    @property
    def _tmp(self) -> Path:
        return self.path.with_name(self.path.name + ".tmp")

    @property
    def prev(self) -> Path:
        return self.path.with_name(self.path.name + ".prev")

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _acquire_lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CampaignLocked(
                f"campaign {self.path} is in use by {holder}; wait for that job to end "
                f"(the lock is released automatically when it exits or dies)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_opens(self) -> None:
        try:
            with h5py.File(self.path, "r", locking=False) as f:
                f.attrs.get("format_version")
        except Exception as err:  # noqa: BLE001
            hint = (f"the last good snapshot is {self.prev}: check it with "
                    f"`pyacemaker-hpc status {self.prev}` and restore it with `cp {self.prev} {self.path}`"
                    if self.prev.exists() else "no snapshot (.prev) exists beside it")
            raise CampaignError(f"campaign {self.path} cannot be opened ({err}); {hint}") from None

    def _publish(self) -> None:
        """fsync the copy, keep the current file as .prev (hard link), rename the copy in."""
        with open(self._tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if self.path.exists():
            link = self.prev.with_name(self.prev.name + ".new")
            try:
                if link.exists():
                    link.unlink()
                os.link(self.path, link)
            except OSError:  # no hard links here (some network filesystems): copy instead
                shutil.copyfile(self.path, link)
            os.replace(link, self.prev)
        os.replace(self._tmp, self.path)
        _fsync_dir(self.path.parent)

    @contextmanager
    def transaction(self) -> Iterator[h5py.File]:
        """Write into a copy; publish it atomically on success, drop it on error.

        Nested calls join the outer transaction (one publish at the end).
        """
        if self.readonly:
            raise CampaignError("campaign opened read-only")
        if self._tx is not None:
            yield self._tx
            return
        shutil.copyfile(self.path, self._tmp)
        f = h5py.File(self._tmp, "a", locking=False)
        self._tx = f
        try:
            yield f
            f.close()
            self._tx = None
            self._publish()
        except BaseException:
            self._tx = None
            f.close()
            self._tmp.unlink(missing_ok=True)
            raise

    @contextmanager
    def reading(self) -> Iterator[h5py.File]:
        """A read handle: the open transaction's copy if one is open, else the live file."""
        if self._tx is not None:
            yield self._tx
            return
        with h5py.File(self.path, "r", locking=False) as f:
            yield f

    # ------------------------------------------------------------------ root / generic
    def attrs(self) -> dict:
        with self.reading() as f:
            return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}

    def exists(self, h5path: str) -> bool:
        with self.reading() as f:
            return h5path in f

    def write_array(self, h5path: str, data, **attrs) -> None:
        with self.transaction() as f:
            if h5path in f:
                del f[h5path]
            ds = f.create_dataset(h5path, data=np.asarray(data))
            for k, v in attrs.items():
                ds.attrs[k] = v

    def read_array(self, h5path: str) -> np.ndarray:
        with self.reading() as f:
            if h5path not in f:
                raise KeyError(f"{h5path} not in campaign {self.path}")
            return f[h5path][()]

    def write_json(self, h5path: str, obj) -> None:
        with self.transaction() as f:
            if h5path in f:
                del f[h5path]
            f.create_dataset(h5path, data=json.dumps(obj, sort_keys=True, default=float), dtype=_STR)

    def read_json(self, h5path: str, default=None):
        with self.reading() as f:
            if h5path not in f:
                return default
            v = f[h5path][()]
            return json.loads(v.decode() if isinstance(v, bytes) else v)

    # ------------------------------------------------------------------ steps
    def step_info(self, step: str) -> dict:
        with self.reading() as f:
            g = f.get(f"steps/{step}")
            if g is None:
                return {"status": PENDING}
            return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}

    def set_step(self, step: str, **attrs) -> None:
        with self.transaction() as f:
            g = f.require_group(f"steps/{step}")
            for k, v in attrs.items():
                g.attrs[k] = "" if v is None else v

    def steps(self) -> dict[str, dict]:
        with self.reading() as f:
            names = list(f["steps"].keys()) if "steps" in f else []
        return {n: self.step_info(n) for n in names}

    # ------------------------------------------------------------------ structures
    def write_structures(self, name: str, structures: Sequence[Atoms]) -> list[str]:
        """Replace the set ``name``; returns the uids (content hashes) in order."""
        n = len(structures)
        counts = np.array([len(a) for a in structures], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        uids = [a.info.get("uid") or structure_uid(a) for a in structures]
        prov = [str(a.info.get("provenance", "")) for a in structures]
        with self.transaction() as f:
            path = f"structures/{name}"
            if path in f:
                del f[path]
            g = f.create_group(path)
            g.create_dataset("numbers", data=np.concatenate([a.numbers for a in structures]) if n else np.zeros(0, int))
            g.create_dataset("positions", data=np.concatenate([a.positions for a in structures]) if n else np.zeros((0, 3)))
            g.create_dataset("offsets", data=offsets)
            g.create_dataset("cell", data=np.array([np.asarray(a.cell) for a in structures]).reshape(n, 3, 3))
            g.create_dataset("pbc", data=np.array([a.pbc for a in structures], dtype=bool).reshape(n, 3))
            g.create_dataset("uid", data=np.array(uids, dtype=object), dtype=_STR)
            g.create_dataset("provenance", data=np.array(prov, dtype=object), dtype=_STR)
            g.attrs["n"] = n
        return uids

    def read_structures(self, name: str) -> list[Atoms]:
        with self.reading() as f:
            g = f.get(f"structures/{name}")
            if g is None:
                raise KeyError(f"structures/{name} not in campaign {self.path}")
            numbers, positions, offsets = g["numbers"][()], g["positions"][()], g["offsets"][()]
            cell, pbc = g["cell"][()], g["pbc"][()]
            uid = [u.decode() if isinstance(u, bytes) else u for u in g["uid"][()]]
            prov = [p.decode() if isinstance(p, bytes) else p for p in g["provenance"][()]]
        out = []
        for i in range(len(uid)):
            s = slice(offsets[i], offsets[i + 1])
            a = Atoms(numbers=numbers[s], positions=positions[s], cell=cell[i], pbc=pbc[i])
            a.info["uid"], a.info["provenance"] = uid[i], prov[i]
            out.append(a)
        return out

    def has_structures(self, name: str) -> bool:
        return self.exists(f"structures/{name}")

    # ------------------------------------------------------------------ labels
    def init_labels(self, set_name: str, source: str, *, keep_existing: bool = True) -> None:
        """Create per-item label arrays for a structure set, all PENDING.

        With ``keep_existing`` an existing group whose size matches is left alone: that is
        how a restart keeps every finished item.
        """
        with self.transaction() as f:
            sg = f[f"structures/{set_name}"]
            n, n_atoms = int(sg.attrs["n"]), int(sg["offsets"][-1])
            path = f"labels/{set_name}/{source}"
            if path in f:
                if keep_existing and f[path]["energy"].shape[0] == n:
                    return
                del f[path]
            g = f.create_group(path)
            g.create_dataset("energy", data=np.full(n, np.nan))
            g.create_dataset("forces", data=np.full((n_atoms, 3), np.nan))
            g.create_dataset("stress", data=np.full((n, 6), np.nan))
            g.create_dataset("status", data=np.array([PENDING] * n, dtype=object), dtype=_STR)
            g.create_dataset("error", data=np.array([""] * n, dtype=object), dtype=_STR)
            g.create_dataset("seconds", data=np.zeros(n))

    def put_labels(self, set_name: str, source: str, items: dict[int, Label]) -> None:
        """Write labels for item indices of a set, in one commit."""
        if not items:
            return
        with self.transaction() as f:
            offsets = f[f"structures/{set_name}/offsets"][()]
            g = f[f"labels/{set_name}/{source}"]
            for i, lab in items.items():
                g["energy"][i] = lab.energy
                if lab.forces is not None:
                    g["forces"][offsets[i]:offsets[i + 1]] = np.asarray(lab.forces, dtype=float)
                if lab.stress is not None:
                    g["stress"][i] = np.asarray(lab.stress, dtype=float).reshape(6)
                g["status"][i] = lab.status
                g["error"][i] = lab.error[:2000]
                g["seconds"][i] = lab.seconds

    def read_labels(self, set_name: str, source: str) -> list[Label]:
        with self.reading() as f:
            offsets = f[f"structures/{set_name}/offsets"][()]
            g = f[f"labels/{set_name}/{source}"]
            energy, forces, stress = g["energy"][()], g["forces"][()], g["stress"][()]
            status = [s.decode() if isinstance(s, bytes) else s for s in g["status"][()]]
            error = [s.decode() if isinstance(s, bytes) else s for s in g["error"][()]]
            seconds = g["seconds"][()]
        out = []
        for i in range(len(energy)):
            st = stress[i] if np.all(np.isfinite(stress[i])) else None
            fr = forces[offsets[i]:offsets[i + 1]] if status[i] == DONE else None
            out.append(Label(energy=float(energy[i]), forces=fr, stress=st, status=status[i],
                             error=error[i], seconds=float(seconds[i])))
        return out

    def has_labels(self, set_name: str, source: str) -> bool:
        return self.exists(f"labels/{set_name}/{source}")

    def labelled_set(self, set_name: str, source: str, *, usable_only: bool = True) -> LabelledSet:
        ls = LabelledSet(self.read_structures(set_name), self.read_labels(set_name, source))
        return ls.usable() if usable_only else ls

    def done_labels_by_uid(self, source: str) -> dict[str, Label]:
        """Every finished label of ``source`` in any set, by structure uid.

        A restart or a changed selection consults this before paying for a calculation.
        """
        found: dict[str, Label] = {}
        with self.reading() as f:
            sets = [s for s in f["labels"].keys() if source in f[f"labels/{s}"]]
        for s in sets:
            structs = self.read_structures(s)
            for at, lab in zip(structs, self.read_labels(s, source)):
                if lab.status == DONE:
                    found.setdefault(at.info["uid"], lab)
        return found

    def label_counts(self, set_name: str, source: str) -> dict[str, int]:
        with self.reading() as f:
            st = [s.decode() if isinstance(s, bytes) else s for s in f[f"labels/{set_name}/{source}/status"][()]]
        return {k: st.count(k) for k in (DONE, FAILED, PENDING)}

    # ------------------------------------------------------------------ descriptors, uncertainty
    def write_uncertainty(self, set_name: str, unc: Uncertainty) -> None:
        with self.transaction():
            self.write_array(f"uncertainty/{set_name}/energy_std", unc.energy_std)
            self.write_array(f"uncertainty/{set_name}/force_std", unc.force_std)

    def read_uncertainty(self, set_name: str) -> Uncertainty:
        return Uncertainty(self.read_array(f"uncertainty/{set_name}/energy_std"),
                           self.read_array(f"uncertainty/{set_name}/force_std"))

    # ------------------------------------------------------------------ models
    def store_model(self, model: TrainedModel) -> None:
        with self.transaction() as f:
            path = f"models/{model.name}"
            if path in f:
                del f[path]
            g = f.create_group(path)
            g.attrs["kind"] = model.kind
            g.attrs["metrics"] = json.dumps(model.metrics, sort_keys=True, default=float)
            for suffix, data in model.files.items():
                ds = g.create_dataset(suffix, data=np.void(data))
                ds.attrs["sha256"] = hashlib.sha256(data).hexdigest()

    def load_model(self, name: str) -> TrainedModel:
        """Read a stored model; every file is checked against its recorded sha256."""
        with self.reading() as f:
            g = f.get(f"models/{name}")
            if g is None:
                raise KeyError(f"models/{name} not in campaign {self.path}")
            files = {}
            for suffix, ds in g.items():
                data = ds[()].tobytes()
                if hashlib.sha256(data).hexdigest() != ds.attrs["sha256"]:
                    raise CampaignError(f"models/{name}/{suffix}: sha256 mismatch, refusing to load it")
                files[suffix] = data
            return TrainedModel(name=name, kind=str(g.attrs["kind"]), files=files,
                                metrics=json.loads(g.attrs["metrics"]))

    def has_model(self, name: str) -> bool:
        return self.exists(f"models/{name}")

    def delete(self, *h5paths: str) -> None:
        """Remove the groups or datasets present (a step's stale resumable outputs); one
        commit, and none (no copy of the file) when nothing is there."""
        present = [p for p in h5paths if self.exists(p)]
        if present:
            with self.transaction() as f:
                for p in present:
                    del f[p]

    def model_names(self) -> list[str]:
        with self.reading() as f:
            return list(f["models"].keys()) if "models" in f else []


# ---------------------------------------------------------------------------------------
# The oracle cache: one group per finished (or failed) calculation, keyed by the oracle's
# settings and the structure's uid. It is the per-item completion flag of every DFT job:
# whichever step or restart asks for a structure again gets the stored result.
def _cache_path(source: str, settings_key: str, uid: str) -> str:
    return f"oracle_cache/{source}/{settings_key}/{uid}"


def cache_label(camp: Campaign, source: str, settings_key: str, uid: str, label: Label) -> None:
    with camp.transaction() as f:
        path = _cache_path(source, settings_key, uid)
        if path in f:
            del f[path]
        g = f.create_group(path)
        g.attrs["status"], g.attrs["error"] = label.status, label.error[:2000]
        g.attrs["energy"], g.attrs["seconds"] = float(label.energy), float(label.seconds)
        g.attrs["time"] = time.time()
        if label.forces is not None:
            g.create_dataset("forces", data=np.asarray(label.forces, dtype=float))
        if label.stress is not None:
            g.create_dataset("stress", data=np.asarray(label.stress, dtype=float).reshape(6))


def cached_labels(camp: Campaign, source: str, settings_key: str) -> dict[str, Label]:
    """Every cached result of ``source`` under ``settings_key``, by uid (done and failed)."""
    out: dict[str, Label] = {}
    with camp.reading() as f:
        g = f.get(f"oracle_cache/{source}/{settings_key}")
        if g is None:
            return out
        for uid, item in g.items():
            a = item.attrs
            out[uid] = Label(energy=float(a["energy"]),
                             forces=item["forces"][()] if "forces" in item else None,
                             stress=item["stress"][()] if "stress" in item else None,
                             status=str(a["status"]), error=str(a["error"]), seconds=float(a["seconds"]))
    return out
