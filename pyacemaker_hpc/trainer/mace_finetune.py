"""Step 3: fine-tune a MACE foundation model on the few DFT labels (``mace_run_train``).

``MaceFinetuner`` is a ``Trainer``: ``fit`` writes the labels as extxyz, runs mace's own
training CLI as a subprocess (an argument list, never a shell string: that is how MACE
users run it, and it keeps PyTorch training out of the MPI process), and returns the
fine-tuned ``.model`` file as bytes in a ``TrainedModel`` with the fit's metrics.

Choices, and why
----------------
* **Methods** (``cfg.method``).
  ``naive``: ``--multiheads_finetuning False``; all weights start from the foundation and
  move to the new labels. Converges best on one system, forgets the rest (mace docs).
  ``multihead``: ``--multiheads_finetuning True`` with a replay head ("pt_head") trained
  alongside on ``--pt_train_file``. Here the replay file holds the *foundation's own*
  labels on structures of our pool (``replay``; see ``foundation_replay_set``): offline
  (``--pt_train_file mp`` downloads Materials Project data), and it keeps the model
  anchored to its teacher away from the DFT points. mace would otherwise force lr 1e-4
  and EMA in multihead mode; we pass ``--force_mh_ft_lr True`` so that ``cfg.lr`` holds
  (with a few dozen epochs, 1e-4 barely moves a small model). The shipped model keeps only
  the fine-tuned head (mace's ``remove_pt_head``), so every MACE tool reads it as a
  plain single-head model and ``initial=`` can continue from it.
* **E0s** (``cfg.e0s``): ``foundation`` keeps the foundation's isolated-atom energies;
  ``estimated`` shifts them by a least-squares fit of (DFT - foundation) on the training
  set (the right choice when the user's DFT has another energy reference than the
  foundation's, e.g. another code, functional or pseudopotentials); an explicit dict
  (JSON, keys Z or symbols) uses isolated-atom DFT in the user's settings. ``average``
  (mace's per-element least-squares average of the fine-tuning set) is refused for
  multihead, as mace itself refuses it, with a ``ValueError`` at construction: never a
  silent substitution. For naive it is passed on as asked, but beware: for a foundation
  whose E0s are isolated-atom energies, ``average`` swaps the reference under the trained
  interaction energies, so the initial error is of the size of the cohesive energy; the
  metric ``initial_valid_rmse_e_meV_per_atom`` shows it (above ~400 meV/atom means the
  E0s are wrong).
* **Loss**: energy/forces/stress weights from ``cfg``; mace's ``stress`` loss (energy +
  forces + stress) when the labels carry stress, ``weighted`` (energy + forces)
  otherwise. Multihead mode uses mace's ``universal`` loss with the same weights.
* **Validation**: ``valid`` is given to mace as ``--valid_file``; otherwise mace splits
  ``cfg.valid_fraction`` off the training set. With a single structure (or fraction 0) the
  training set is its own validation set and the metrics say so (``valid_is_train`` = 1).
* **Metrics**: mace's final error table (its log) for the saved model: RMSE of energy per
  atom (meV/atom), forces (meV/A), stress (meV/A^3) on train and valid; the initial
  validation RMSE of the foundation before any step (mace's "Initial" evaluation), the
  E0s used, sizes, epochs and wall time.
* **Failure**: a non-zero exit or a missing model raises ``MaceTrainError`` carrying
  mace's own last error lines and the path of the full log.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import parse_e0s
from ..core.models import LabelledSet, TrainedModel
from ..oracle.mace_surrogate import MaceCommittee, pick_device, resolve_model, torch_dtype
from ..tools.logged_run import run_with_progress
from ..tools.toy_data import write_mace_extxyz

#: mace_run_train's epoch counter in its output ("INFO: Epoch 12: head: ...")
_EPOCH = re.compile(r"Epoch (\d+):")

PREFIX = "REF_"


class MaceTrainError(RuntimeError):
    """mace_run_train failed; the message carries mace's own last error lines."""


def foundation_replay_set(base_model: str, structures: Sequence, *, device: str = "cpu",
                          default_dtype: str = "float64", batch_size: int = 32) -> LabelledSet:
    """The foundation's own labels on ``structures``: the offline replay set of multihead
    fine-tuning (mace calls this pseudo-label replay)."""
    comm = MaceCommittee([base_model], device=device, default_dtype=default_dtype,
                         batch_size=batch_size)
    return LabelledSet([a.copy() for a in structures], comm.label_batch(structures))


_TABLE_HEADER = re.compile(r"^\|\s*config_type\s*\|")


def parse_error_table(log_text: str) -> dict[str, float]:
    """Rows of the last 'Error-table on TRAIN and VALID' of a mace log as metrics:
    ``{train,valid}_rmse_{e_meV_per_atom,f_meV_per_A,stress_meV_per_A3}``."""
    idx = log_text.rfind("Error-table on TRAIN and VALID")
    if idx < 0:
        return {}
    cols: list[str] = []
    out: dict[str, float] = {}
    for line in log_text[idx:].splitlines()[1:]:
        line = line.strip()
        if line.startswith("+"):
            continue
        if not line.startswith("|"):
            if cols:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if _TABLE_HEADER.match(line):
            cols = cells
            continue
        row = cells[0]
        split = row.split("_", 1)[0]  # train_Default / valid_Default
        head = row.split("_", 1)[1] if "_" in row else ""
        if head == "pt_head" or split not in ("train", "valid"):
            continue
        for name, val in zip(cols[1:], cells[1:]):
            key = None
            if name.startswith("RMSE E") and "atom" in name:
                key = "rmse_e_meV_per_atom"
            elif name.startswith("RMSE F"):
                key = "rmse_f_meV_per_A"
            elif name.startswith("RMSE Stress"):
                key = "rmse_stress_meV_per_A3"
            if key:
                try:
                    out[f"{split}_{key}"] = float(val)
                except ValueError:
                    pass
    return out


def parse_initial(log_text: str) -> dict[str, float]:
    """mace's 'Initial:' evaluation (the foundation before fine-tuning) on the valid set."""
    out = {}
    for m in re.finditer(r"Initial: head: (\S+), loss=\s*\S+, RMSE_E_per_atom=\s*([\d.eE+-]+) meV"
                         r"(?:, RMSE_F=\s*([\d.eE+-]+) meV / A)?", log_text):
        if m.group(1).rstrip(",") == "pt_head":
            continue
        out["initial_valid_rmse_e_meV_per_atom"] = float(m.group(2))
        if m.group(3):
            out["initial_valid_rmse_f_meV_per_A"] = float(m.group(3))
    return out


def parse_e0s_used(log_text: str) -> dict[str, float]:
    out = {}
    for m in re.finditer(r"Atomic Energies used \(z: eV\) for head (\S+): (\{[^}]*\})", log_text):
        if m.group(1) == "pt_head":
            continue
        try:
            for z, e in ast.literal_eval(m.group(2)).items():
                out[f"e0_Z{int(z)}"] = float(e)
        except (ValueError, SyntaxError):
            pass
    return out


def _error_lines(text: str, n: int = 15) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    tb = [i for i, ln in enumerate(lines) if ln.startswith("Traceback")]
    if tb:
        lines = lines[tb[-1]:]
    else:
        err = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
        lines = err or lines
    return "\n".join(lines[-n:])


class MaceFinetuner:
    """Fine-tunes ``base_model`` (a MACE-MP name or a .model path) with ``mace_run_train``.

    ``epochs``: ``--max_num_epochs``. ``cfg``: a ``FinetuneCfg`` (method, e0s, loss
    weights, lr, batch size, valid fraction, seed). ``seed`` overrides ``cfg.seed`` (for
    committee members). ``replay``: for multihead, the foundation's own labels on replay
    structures (``foundation_replay_set``). ``mace_run_train``: path of the CLI (default:
    beside the running Python); ``timeout_s``: wall-clock limit of one fit (None: none).
    """

    kind = "mace"

    def __init__(self, base_model: str, epochs: int, cfg, *, device: str = "cpu",
                 default_dtype: str = "float64", seed: int | None = None,
                 replay: LabelledSet | None = None, mace_run_train: str | None = None,
                 timeout_s: float | None = None):
        if int(epochs) <= 0:
            raise ValueError(f"epochs must be > 0 (got {epochs})")
        if cfg.method not in ("naive", "multihead"):
            raise ValueError(f"mace.finetune.method: naive or multihead (got {cfg.method!r})")
        if default_dtype not in ("float32", "float64"):
            raise ValueError(f"default_dtype: float32 or float64 (got {default_dtype!r})")
        self.base_model = str(base_model)
        self.epochs = int(epochs)
        self.cfg = cfg
        self.device = device
        self.default_dtype = default_dtype
        self.seed = int(cfg.seed if seed is None else seed)
        self.replay = replay
        self.e0s = parse_e0s(cfg.e0s, cfg.method)  # fail at construction, before any work
        self.mace_run_train = mace_run_train or str(Path(sys.executable).parent / "mace_run_train")
        self.timeout_s = timeout_s

    # ------------------------------------------------------------------------------------
    def command(self, *, name: str, foundation: str, train_file: str, n_train: int,
                valid_file: str | None, has_stress: bool, replay_file: str | None,
                e0s: str | None = None) -> list[str]:
        """The mace_run_train argument list (public so it can be logged and tested);
        ``e0s`` replaces the configured ``--E0s`` (``foundation`` once they are baked in)."""
        cfg = self.cfg
        cmd = [self.mace_run_train, "--name", name, "--foundation_model", foundation,
               "--train_file", train_file]
        if valid_file:
            cmd += ["--valid_file", valid_file]
        else:
            cmd += ["--valid_fraction", repr(float(cfg.valid_fraction))]
        cmd += ["--energy_key", f"{PREFIX}energy", "--forces_key", f"{PREFIX}forces"]
        if has_stress:
            cmd += ["--stress_key", f"{PREFIX}stress"]
        cmd += ["--E0s", e0s or self.e0s,
                "--loss", "stress" if has_stress else "weighted",
                "--energy_weight", repr(float(cfg.energy_weight)),
                "--forces_weight", repr(float(cfg.forces_weight)),
                "--stress_weight", repr(float(cfg.stress_weight)),
                "--lr", repr(float(cfg.lr)),
                "--batch_size", str(max(1, min(int(cfg.batch_size), n_train))),
                "--valid_batch_size", str(max(1, int(cfg.batch_size))),
                "--max_num_epochs", str(self.epochs),
                "--device", pick_device(self.device),
                "--default_dtype", self.default_dtype,
                "--seed", str(self.seed),
                "--num_workers", "0", "--eval_interval", "1", "--save_cpu",
                "--error_table", "PerAtomRMSEstressvirials" if has_stress else "PerAtomRMSE"]
        if cfg.ema_decay is not None:
            cmd += ["--ema", "--ema_decay", repr(float(cfg.ema_decay))]
        if cfg.method == "multihead":
            cmd += ["--multiheads_finetuning", "True", "--pt_train_file", str(replay_file),
                    "--force_mh_ft_lr", "True", "--num_samples_pt", str(len(self.replay or []) or 1)]
        else:
            cmd += ["--multiheads_finetuning", "False"]
        return cmd

    def fit(self, train: LabelledSet, workdir, *, initial: TrainedModel | None = None,
            name: str = "mace_ft", valid: LabelledSet | None = None) -> TrainedModel:
        """Fine-tune on ``train`` in ``workdir``; return the model file and its metrics.

        ``initial``: a previous MACE ``TrainedModel`` to continue from instead of
        ``base_model`` (its ``.model`` bytes become the foundation of this run).
        """
        t0 = time.time()
        train = train.usable()
        if len(train) == 0:
            raise MaceTrainError("no usable (DONE, finite) labels to fine-tune on")
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
        for stale in ("checkpoints", "logs", "results"):  # a rerun starts clean
            shutil.rmtree(wd / stale, ignore_errors=True)
        for f in wd.glob(f"{name}*.model"):
            f.unlink()

        if initial is not None:
            if initial.kind != "mace" or ".model" not in initial.files:
                raise ValueError(f"initial must be a MACE TrainedModel with a .model file (got {initial.kind})")
            foundation = str(wd / "initial.model")
            Path(foundation).write_bytes(initial.files[".model"])
        else:
            foundation = resolve_model(self.base_model)

        foundation = self._mace_readable_foundation(foundation, wd)
        foundation, e0s = self._foundation_with_e0s(foundation, wd, train)
        has_stress = any(lab.stress is not None for lab in train.labels)
        write_mace_extxyz(train, str(wd / "train.xyz"), prefix=PREFIX)
        n = len(train)
        valid_is_train = False
        valid_file = None
        if valid is not None and len(valid.usable()) > 0:
            write_mace_extxyz(valid.usable(), str(wd / "valid.xyz"), prefix=PREFIX)
            valid_file, n_train, n_valid = "valid.xyz", n, len(valid.usable())
        elif n < 2 or not (0.0 < float(self.cfg.valid_fraction) < 1.0):
            valid_file, n_train, n_valid, valid_is_train = "train.xyz", n, n, True
        else:
            n_valid = max(1, int(self.cfg.valid_fraction * n))
            n_train = n - n_valid

        replay_file = None
        if self.cfg.method == "multihead":
            if self.replay is None or len(self.replay.usable()) == 0:
                raise MaceTrainError("multihead fine-tuning needs a replay set: the foundation's own "
                                     "labels on replay structures (foundation_replay_set)")
            write_mace_extxyz(self.replay.usable(), str(wd / "replay.xyz"), prefix=PREFIX)
            replay_file = "replay.xyz"

        cmd = self.command(name=name, foundation=foundation, train_file="train.xyz",
                           n_train=n_train, valid_file=valid_file, has_stress=has_stress,
                           replay_file=replay_file, e0s=e0s)
        (wd / "command.json").write_text(json.dumps(cmd, indent=1))
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        out_path = wd / "mace_run_train.out"
        try:
            code = run_with_progress(cmd, wd, env, out_path, self.timeout_s, label=f"mace_run_train {name}",
                                     pattern=_EPOCH, total=self.epochs)
        except subprocess.TimeoutExpired:
            raise MaceTrainError(f"mace_run_train exceeded {self.timeout_s} s (log: {out_path})") from None
        except OSError as err:
            raise MaceTrainError(f"cannot run {cmd[0]}: {err}") from None
        text = out_path.read_text(errors="replace")
        log_files = sorted((wd / "logs").glob(f"{name}_run-*.log"))
        log_text = "\n".join(p.read_text(errors="replace") for p in log_files
                             if not p.name.endswith("_debug.log")) or text
        model_path = wd / f"{name}.model"
        if code != 0 or not model_path.is_file():
            why = f"exit status {code}" if code else f"no {model_path.name} written"
            raise MaceTrainError(f"mace_run_train failed ({why}); full log: {out_path}\n"
                                 + _error_lines(text or log_text))

        if self.cfg.method == "multihead":
            model_path = self._single_head(model_path, wd / f"{name}_single_head.model")

        metrics: dict[str, float] = {}
        metrics.update(parse_error_table(log_text))
        metrics.update(parse_initial(log_text))
        metrics.update(parse_e0s_used(log_text))
        metrics.update({"n_train": float(n_train), "n_valid": float(n_valid),
                        "valid_is_train": float(valid_is_train), "epochs": float(self.epochs),
                        "multihead": float(self.cfg.method == "multihead"),
                        "n_replay": float(len(self.replay.usable()) if replay_file else 0),
                        "seed": float(self.seed), "seconds": round(time.time() - t0, 2)})
        return TrainedModel(name=name, kind="mace", files={".model": model_path.read_bytes()},
                            metrics=metrics)

    def _mace_readable_foundation(self, path: str, wd: Path) -> str:
        """Work around mace 0.3.16 for one-element foundations.

        mace_run_train reads the foundation's E0s with ``atomic_energies.squeeze()``; for a
        single-head, single-element model (shape (1, 1)) that gives a 0-d tensor and
        ``--E0s foundation``, ``--E0s estimated`` and multihead fine-tuning all die with
        "invalid index of a 0-dim tensor". MACE-MP (89 elements) is not affected. Such a
        foundation is copied with its E0 buffer stored 1-D, which the model's own forward
        reads identically (``torch.atleast_2d``); every weight is untouched.
        """
        import torch

        with torch_dtype(self.default_dtype):
            model = torch.load(path, map_location="cpu", weights_only=False)
            fn = getattr(model, "atomic_energies_fn", None)
            ae = getattr(fn, "atomic_energies", None)
            if ae is None or ae.ndim != 2 or ae.numel() != 1:
                return path
            fn.atomic_energies = ae.reshape(1).clone()
            out = wd / "foundation_1d_e0.model"
            torch.save(model, out)
        return str(out)

    def _foundation_with_e0s(self, path: str, wd: Path, train: LabelledSet) -> tuple[str, str]:
        """Naive fine-tuning: a copy of the foundation with the E0s to train with already in
        its E0 buffer, and ``--E0s foundation``; else ``(path, configured E0s)``.

        mace 0.3.16 builds the new model with the requested E0s and then copies every
        foundation tensor of the same name and shape into it (``load_foundations_elements``),
        the E0 buffer included: when the foundation holds exactly the user's elements (a
        stand-in, a system-specific foundation) the ``estimated``, ``average`` or given E0s
        are silently replaced by the foundation's, and the fit starts with the whole
        reference offset in its energies (Cu-Au stand-in against PBE: 545 meV/atom on the
        picks) for the readouts to absorb. MACE-MP (89 elements) never matches and was not
        affected. Multihead keeps the foundation's E0s for its replay head and its fine-tuned
        head's differ in shape, so it is left to mace. ``estimated`` is mace's own rule: the
        least-squares per-element correction of the foundation's predictions on ``train``;
        ``average`` the least-squares E0s of ``train``'s energies."""
        if self.cfg.method != "naive" or self.e0s == "foundation":
            return path, self.e0s
        import torch
        from ase.data import atomic_numbers

        ok = [(at, lab) for at, lab in zip(train.structures, train.labels) if lab.energy is not None]
        zs = sorted({atomic_numbers[s] for at, _ in ok for s in at.get_chemical_symbols()})
        counts = np.array([[at.get_atomic_numbers().tolist().count(z) for z in zs] for at, _ in ok], float)
        energies = np.array([lab.energy for _, lab in ok])
        with torch_dtype(self.default_dtype):
            model = torch.load(path, map_location="cpu", weights_only=False)
        table = [int(z) for z in model.atomic_numbers]
        buf = model.atomic_energies_fn.atomic_energies
        flat = buf.reshape(-1, len(table))[0] if buf.ndim > 1 else buf
        if self.e0s == "estimated":
            pred = MaceCommittee([path], pick_device(self.device), self.default_dtype).label_batch([at for at, _ in ok])
            resid = energies - np.array([p.energy for p in pred])
            corr = np.linalg.lstsq(counts, resid, rcond=None)[0]
            target = {z: float(flat[table.index(z)]) + c for z, c in zip(zs, corr)}
        elif self.e0s == "average":
            target = dict(zip(zs, np.linalg.lstsq(counts, energies, rcond=None)[0].tolist()))
        else:
            target = {int(k): float(v) for k, v in ast.literal_eval(self.e0s).items()}
            if set(zs) - set(target):
                raise MaceTrainError(f"mace.finetune.e0s gives no E0 for Z={sorted(set(zs) - set(target))}, "
                                     f"which the DFT labels hold")
        missing = [z for z in target if z not in table]
        if missing:
            raise MaceTrainError(f"the foundation has no element {missing}: it cannot fine-tune on them")
        new = buf.detach().clone()
        view = new.reshape(-1, len(table))
        for z, e0 in target.items():
            view[:, table.index(z)] = e0
        model.atomic_energies_fn.atomic_energies = new
        out = wd / "foundation_e0s.model"
        with torch_dtype(self.default_dtype):
            torch.save(model, out)
        (wd / "e0s.json").write_text(json.dumps({"rule": self.e0s, "e0s": target}, indent=1))
        return str(out), "foundation"

    def _single_head(self, src: Path, dst: Path) -> Path:
        """Keep only the fine-tuned head of a multihead model (mace's remove_pt_head)."""
        import torch
        from mace.tools.scripts_utils import remove_pt_head

        with torch_dtype(self.default_dtype):
            model = torch.load(src, map_location="cpu", weights_only=False)
            heads = list(getattr(model, "heads", []) or [])
            if len(heads) <= 1:
                return src
            keep = next((h for h in heads if h != "pt_head"), None)
            torch.save(remove_pt_head(model, keep), dst)
        return dst
