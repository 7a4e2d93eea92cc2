"""Shared fixtures: a real tiny MACE model trained on the fly (mace_run_train, EMT labels)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyacemaker_hpc.tools.toy_data import label_with, perturbed_bulk, write_mace_extxyz

SHARED = Path(__file__).resolve().parents[2] / "shared"
BIN = Path(sys.executable).parent


def cu_au_cells(n: int, seed: int) -> list:
    """Strained, rattled fcc Cu cells with every other cell's first atom (or two) made Au."""
    cells = perturbed_bulk("Cu", n=n, seed=seed, a=3.75)
    for k, at in enumerate(cells):
        at.symbols[: k % 3] = "Au"
    return cells


def _train_tiny_mace(workdir: Path, seed: int = 0, n: int = 24, epochs: int = 3, cells=None) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    data = label_with(cells if cells is not None else perturbed_bulk("Cu", n=n, seed=seed))
    write_mace_extxyz(data, str(workdir / "train.xyz"))
    cmd = [str(BIN / "mace_run_train"), "--name", "tiny", "--train_file", "train.xyz",
           "--valid_fraction", "0.2", "--energy_key", "REF_energy", "--forces_key", "REF_forces",
           "--stress_key", "REF_stress", "--model", "MACE", "--hidden_irreps", "8x0e+8x1o",
           "--r_max", "4.5", "--num_interactions", "2", "--correlation", "2", "--max_L", "1",
           "--max_ell", "2", "--num_radial_basis", "6", "--E0s", "average", "--batch_size", "4",
           "--max_num_epochs", str(epochs), "--device", "cpu", "--default_dtype", "float64",
           "--seed", str(seed), "--num_workers", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"mace_run_train failed:\n{res.stderr[-3000:]}")
    model = workdir / "tiny.model"
    assert model.is_file(), list(workdir.iterdir())
    return model


@pytest.fixture(scope="session")
def tiny_mace_model(tmp_path_factory) -> Path:
    """Path to a tiny real MACE model (8x0e+8x1o) trained for 3 epochs on EMT Cu."""
    return _train_tiny_mace(tmp_path_factory.mktemp("tiny_mace"))


@pytest.fixture(scope="session")
def tiny_mace_committee(tmp_path_factory) -> list[Path]:
    """Two tiny MACE models that differ only in their training seed."""
    root = tmp_path_factory.mktemp("tiny_committee")
    return [_train_tiny_mace(root / f"m{s}", seed=s) for s in (1, 2)]


@pytest.fixture(scope="session")
def tiny_cuau_mace(tmp_path_factory) -> Path:
    """A tiny MACE foundation that holds exactly Cu and Au (EMT labels): the case where
    mace copies the foundation's E0 buffer over the fine-tuning E0s."""
    return _train_tiny_mace(tmp_path_factory.mktemp("tiny_cuau"), cells=cu_au_cells(24, seed=3))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (sample DFT/VASP data) is not beside this checkout")
    return SHARED
