"""A tiny but complete campaign config for the pipeline tests (EMT as the 'DFT')."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

HELPERS = Path(__file__).parent / "helpers"


def tiny_config(tmp: Path, base_model: str, committee: list[str], *, sleep: float = 0.0,
                distill: bool = True, **overrides) -> Path:
    cfg = {
        "seed": 3,
        "system": {"elements": ["Cu"], "prototypes": [{"element": "Cu", "structure": "fcc", "a": 3.6}]},
        "campaign": {"path": str(tmp / "campaign.h5"), "workdir": str(tmp / "work"),
                     "output_dir": str(tmp / "results")},
        "distillation": {
            "enable_mace_distillation": distill,
            "step1_direct_sampling": {"target_points": 12, "objective": "maximize_entropy"},
            "step2_active_learning": {"uncertainty_threshold": 0.5, "dft_calculator": "ASE"},
            "step3_mace_finetune": {"base_model": base_model, "epochs": 2},
            "step4_surrogate_sampling": {"target_points": 30, "method": "mace_md"},
            "step7_pacemaker_finetune": {"enable": True, "weight_dft": 10.0},
        },
        "generator": {"n_candidates": 40, "supercells": [[1, 1, 1]], "vacancies": False},
        "descriptors": {"kind": "mace"},
        "dft": {"ase": {"import_path": "counting_calc.CountingEMT",
                        "kwargs": {"log_file": str(tmp / "dft_calls.log"), "sleep": sleep}}},
        "mace": {"committee": committee, "device": "cpu",
                 # naive: seconds per fine-tune; the multihead default has its own pipeline test
                 "finetune": {"batch_size": 2, "method": "naive"},
                 "md": {"temperatures": [300, 1000], "strains": [0.0], "steps": 20, "sample_interval": 5,
                        "replicas_per_temperature": 1}},
        "pacemaker": {"preset": "tiny", "max_iterations": 15, "delta_max_iterations": 10},
        "evaluation": {"n_holdout": 5},
        "active_learning": {"initial_dft": 6, "batch_size": 3, "max_iterations": 2, "dft_budget": 12,
                            "gamma_threshold": 1.0, "n_candidates_per_iteration": 20},
    }
    for key, value in overrides.items():  # "pacemaker.delta_mode": "residual"
        node = cfg
        *parts, last = key.split(".")
        for p in parts:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def dft_calls(tmp: Path) -> list[str]:
    log = tmp / "dft_calls.log"
    return [l.split()[0] for l in log.read_text().splitlines()] if log.exists() else []


# ------------------------------------------------------------------ running the CLI
BIN = Path(sys.executable).parent


def cli_env() -> dict:
    """The environment of a CLI run: one thread, quiet TensorFlow, the counting calculator importable."""
    return dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
                PYTHONPATH=os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]))


def cli_cmd(*args, nranks: int = 0) -> list[str]:
    """``pyacemaker-hpc ARGS``, under ``mpirun -n NRANKS`` when nranks > 0."""
    cmd = [str(BIN / "pyacemaker-hpc"), *map(str, args)]
    return [str(BIN / "mpirun"), "-n", str(nranks), *cmd] if nranks else cmd


def run_cli(*args, nranks: int = 0, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cli_cmd(*args, nranks=nranks), capture_output=True, text=True, env=cli_env(),
                          timeout=timeout, start_new_session=True)


def start_until_dft_calls(config: Path, tmp: Path, n_calls: int, *, nranks: int = 2,
                          deadline_s: float = 600, poll_s: float = 0.1) -> subprocess.Popen:
    """Start the job in its own session and return once ``n_calls`` DFT calls are logged."""
    proc = subprocess.Popen(cli_cmd(config, nranks=nranks), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=cli_env(), start_new_session=True)
    deadline = time.time() + deadline_s
    while len(dft_calls(tmp)) < n_calls:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(poll_s)
    return proc


def step_attrs(h5: Path) -> dict:
    """``/steps/<step>`` attributes of a campaign, read with plain h5py."""
    import h5py

    with h5py.File(h5, "r") as f:
        return {s: dict(f["steps"][s].attrs) for s in f["steps"]}
