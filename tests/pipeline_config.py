"""A tiny but complete campaign config for the pipeline tests (EMT as the 'DFT')."""
from __future__ import annotations

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
                 "finetune": {"batch_size": 2},
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
