"""Functions that run on worker ranks (or inline when serial). Module-level, plain
arguments, so the farm can pickle them by reference; heavy objects (a MACE model, a DFT
calculator) are built once per process and reused."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ..config import Config
from ..parallel.environment import serial_children


# ------------------------------------------------------------------ descriptors
@functools.lru_cache(maxsize=4)
def _descriptor(kind, pooling, mace_model, elements, device, dtype):
    from ..structure_generator.descriptors import make_descriptor

    return make_descriptor(kind, list(pooling), mace_model=mace_model, elements=list(elements),
                           device=device, dtype=dtype)


def descriptor_task(kind: str, pooling: tuple, mace_model: str | None, elements: tuple,
                    device: str, dtype: str, structures: list) -> np.ndarray:
    return _descriptor(kind, tuple(pooling), mace_model, tuple(elements), device, dtype).compute_many(structures)


# ------------------------------------------------------------------ DFT
@functools.lru_cache(maxsize=2)
def _dft_oracle(cfg_json: str):
    from ..oracle.dft import make_dft_oracle

    return make_dft_oracle(Config.model_validate_json(cfg_json))


def dft_task(cfg: Config, atoms, workdir: str):
    """One DFT calculation in its own directory; failures come back as FAILED labels."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    return _dft_oracle(cfg.model_dump_json()).label(atoms, workdir)


# ------------------------------------------------------------------ MACE
@functools.lru_cache(maxsize=4)
def _committee(models: tuple, device: str, dtype: str, batch_size: int):
    from ..oracle.mace_surrogate import MaceCommittee

    return MaceCommittee(list(models), device=device, default_dtype=dtype, batch_size=batch_size)


def uncertainty_task(models: tuple, device: str, dtype: str, batch_size: int, structures: list):
    return _committee(tuple(models), device, dtype, batch_size).uncertainty(structures)


def mace_label_task(models: tuple, device: str, dtype: str, batch_size: int, structures: list):
    """Labels of the first model, or with several (``mace.teacher: mean``) their mean."""
    return _committee(tuple(models), device, dtype, batch_size).label_batch(structures, mean=len(models) > 1)


def md_task(model: str, atoms, temperature: float, strain: float, md_cfg, seed: int,
            device: str, dtype: str, committee: tuple | None):
    from ..oracle.mace_surrogate import run_md_replica

    return run_md_replica(model, atoms, temperature=temperature, strain=strain, md=md_cfg, seed=seed,
                          device=device, default_dtype=dtype, committee=list(committee) if committee else None)


def finetune_task(cfg: Config, base_model: str, train, workdir: str, seed: int, name: str, valid=None,
                  overrides: dict | None = None, replay=None):
    """mace_run_train on the train rank (its own process); ``overrides`` replace fields of
    ``mace.finetune`` (the loss chosen by validation); ``replay``: multihead's replay set."""
    from ..oracle.mace_surrogate import pick_device
    from ..trainer.mace_finetune import MaceFinetuner

    ft_cfg = cfg.mace.finetune.model_copy(update=dict(overrides or {}))
    ft = MaceFinetuner(base_model, cfg.distillation.step3_mace_finetune.epochs, ft_cfg,
                       device=pick_device(cfg.mace.device), default_dtype=cfg.mace.default_dtype, seed=seed,
                       replay=replay)
    with serial_children():
        return ft.fit(train, workdir, name=name, valid=valid)


def finetune_selection_task(cfg: Config, base_model: str, data, workdir: str, replay=None):
    """Cross-validate the ``mace.finetune.select_by_validation`` candidates (train rank)."""
    from ..trainer.finetune_selection import select_finetune_loss

    ft = cfg.mace.finetune

    def fit(overrides, train, valid, wd):
        return finetune_task(cfg, base_model, train, wd, ft.seed, "cv", valid=valid, overrides=overrides,
                             replay=replay)

    return select_finetune_loss(fit, data, ft.select_by_validation, workdir, folds=ft.cv_folds, seed=ft.seed)


# ------------------------------------------------------------------ pacemaker
def _gpu_visible() -> bool:
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None and vis.strip() in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists()


def pacemaker_trainer(cfg: Config, e0: dict):
    from ..trainer.pacemaker import PacemakerTrainer

    return PacemakerTrainer(cfg.pacemaker, cfg.system.elements, e0=e0, gpu=_gpu_visible())


def ace_fit_task(cfg: Config, e0: dict, train, workdir: str, name: str, initial=None, weights=None):
    with serial_children():
        return pacemaker_trainer(cfg, e0).fit(train, workdir, initial=initial, name=name, weights=weights)


def delta_task(cfg: Config, e0: dict, base, surrogate, dft, workdir: str, weight_dft: float | None = None):
    """Step 7's fit; ``weight_dft`` (the one chosen by validation) replaces the config's."""
    from ..trainer.delta import delta_fit

    with serial_children():
        return delta_fit(pacemaker_trainer(cfg, e0), base, surrogate, dft,
                         mode=cfg.pacemaker.delta_mode,
                         weight_dft=weight_dft or cfg.distillation.step7_pacemaker_finetune.weight_dft,
                         weight_dft_forces=cfg.pacemaker.weight_dft_forces,
                         correction_functions=cfg.pacemaker.correction_functions,
                         workdir=workdir)


def weight_dft_selection_task(cfg: Config, e0: dict, base, surrogate, dft, workdir: str):
    """Cross-validate ``pacemaker.select_weight_dft`` (train rank)."""
    from ..trainer.delta import select_weight_dft

    with serial_children():
        return select_weight_dft(pacemaker_trainer(cfg, e0), base, surrogate, dft, cfg.pacemaker.select_weight_dft,
                                 workdir, folds=cfg.pacemaker.cv_folds, seed=cfg.seed,
                                 weight_dft_forces=cfg.pacemaker.weight_dft_forces)
