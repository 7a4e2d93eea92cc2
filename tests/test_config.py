"""Config validation: every mistake is a one-line error naming the key or file."""
from __future__ import annotations

import pytest
import yaml
from ase.build import bulk
from ase.io import write

from pyacemaker_hpc.config import ConfigError, Distillation, load_config

MINIMAL = {"system": {"elements": ["Cu"], "prototypes": [{"element": "Cu", "structure": "fcc"}]},
           "distillation": {"step2_active_learning": {"dft_calculator": "ASE"}}}


def _write(tmp_path, data, name="c.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _err(tmp_path, data) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, data))
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_distillation_block_has_exactly_the_seed_keys_and_defaults():
    d = Distillation().model_dump()
    assert d == {
        "enable_mace_distillation": True,
        "step1_direct_sampling": {"target_points": 100, "objective": "maximize_entropy"},
        "step2_active_learning": {"uncertainty_threshold": 0.8, "dft_calculator": "VASP"},
        "step3_mace_finetune": {"base_model": "MACE-MP-0", "epochs": 50},
        "step4_surrogate_sampling": {"target_points": 1000, "method": "mace_md"},
        "step7_pacemaker_finetune": {"enable": True, "weight_dft": 300.0},  # issue 9: measured best
    }


def test_minimal_config_is_valid(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.dft_calculator == "ase"
    assert cfg.distillation.step1_direct_sampling.target_points == 100


def test_quickstart_config_is_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        cfg = load_config("configs/quickstart.yaml")
    finally:
        os.chdir(cwd)
    assert cfg.dft_calculator == "gpaw"


def test_malformed_yaml_names_line(tmp_path):
    msg = _err(tmp_path, "system:\n  elements: [Cu\n")
    assert "malformed YAML" in msg and "line" in msg


def test_unknown_key_suggests_nearest(tmp_path):
    data = {**MINIMAL, "distillation": {"step1_direct_sampling": {"target_point": 5}}}
    msg = _err(tmp_path, data)
    assert "distillation.step1_direct_sampling.target_point" in msg
    assert "did you mean 'target_points'" in msg


def test_unknown_top_level_section_suggests(tmp_path):
    msg = _err(tmp_path, {**MINIMAL, "pacemakr": {}})
    assert "'pacemakr'" in msg and "did you mean 'pacemaker'" in msg


def test_wrong_type_names_key(tmp_path):
    data = {**MINIMAL, "distillation": {"step3_mace_finetune": {"epochs": "many"}}}
    msg = _err(tmp_path, data)
    assert "distillation.step3_mace_finetune.epochs" in msg and "'many'" in msg


@pytest.mark.parametrize("value", [0, -5])
def test_non_positive_counts(tmp_path, value):
    data = {**MINIMAL, "distillation": {"step1_direct_sampling": {"target_points": value}}}
    msg = _err(tmp_path, data)
    assert "target_points" in msg and "greater than 0" in msg


def test_missing_seed_file(tmp_path):
    data = {"system": {"elements": ["Cu"], "seed_structures": ["nope.xyz"]}}
    msg = _err(tmp_path, data)
    assert "system.seed_structures[0]" in msg and "nope.xyz" in msg


def test_elements_in_structures_not_in_config(tmp_path):
    p = tmp_path / "nicu.xyz"
    write(p, bulk("Ni", cubic=True))
    msg = _err(tmp_path, {"system": {"elements": ["Cu"], "seed_structures": [str(p)]}})
    assert "['Ni']" in msg and "system.elements" in msg


def test_overlapping_atoms_in_seed(tmp_path):
    at = bulk("Cu", cubic=True)
    at.positions[1] = at.positions[0] + [0.3, 0, 0]
    p = tmp_path / "bad.xyz"
    write(p, at)
    msg = _err(tmp_path, {"system": {"elements": ["Cu"], "seed_structures": [str(p)]}})
    assert "overlap" in msg and "atoms 0 and 1" in msg


def test_missing_potcar_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("VASP_PP_PATH", raising=False)
    data = {**MINIMAL, "distillation": {"step2_active_learning": {"dft_calculator": "VASP"}}}
    assert "VASP_PP_PATH" in _err(tmp_path, data)
    data["dft"] = {"vasp": {"pp_path": str(tmp_path / "potcars")}}
    assert "POTCAR directory not found" in _err(tmp_path, data)


def test_base_model_path_must_exist(tmp_path):
    data = {**MINIMAL, "distillation": {"step2_active_learning": {"dft_calculator": "ASE"},
                                        "step3_mace_finetune": {"base_model": "models/missing.model"}}}
    msg = _err(tmp_path, data)
    assert "base_model" in msg and "missing.model" in msg


def test_foundation_names_accepted_without_file(tmp_path):
    for name in ("MACE-MP-0", "small", "medium-mpa-0"):
        data = {**MINIMAL, "distillation": {"step2_active_learning": {"dft_calculator": "ASE"},
                                            "step3_mace_finetune": {"base_model": name}}}
        assert load_config(_write(tmp_path, data)).distillation.step3_mace_finetune.base_model == name


def test_unknown_dft_calculator(tmp_path):
    data = {**MINIMAL, "distillation": {"step2_active_learning": {"dft_calculator": "QE"}}}
    assert "dft_calculator" in _err(tmp_path, data)


def test_cli_validate_exits_2_with_one_line(tmp_path, capsys):
    from pyacemaker_hpc.cli import main

    p = _write(tmp_path, {**MINIMAL, "seeds": 1})
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'seeds'" in err and "did you mean 'seed'" in err


@pytest.mark.parametrize("mesh", [[4, 0, 4], [4, 4]])
def test_bad_kpoint_mesh_names_the_key(tmp_path, mesh):
    data = {**MINIMAL, "dft": {"gpaw": {"kpoint_mesh": mesh}}}
    assert "dft.gpaw.kpoint_mesh" in _err(tmp_path, data)


def test_vasp_kspacing_makes_the_mesh_and_excludes_kpoint_mesh(tmp_path):
    """With KSPACING in the INCAR, VASP makes the mesh (ASE writes no KPOINTS), so a
    kpoint_mesh beside it would be silently ignored: an error naming both. The mesh the
    cost estimate and the mixed-mesh check reason from is VASP's ceil(|b_i| 2 pi / KSPACING)."""
    from pyacemaker_hpc.config import VaspCfg

    data = {**MINIMAL, "dft": {"vasp": {"kpoint_mesh": [4, 4, 4], "incar": {"KSPACING": 0.3}}}}
    msg = _err(tmp_path, data)
    assert "dft.vasp" in msg and "KSPACING" in msg and "kpoint_mesh" in msg
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)  # |b| 2 pi = 1.740 / A
    assert VaspCfg(incar={"kspacing": 0.3}).mesh(cu) == (6, 6, 6)
    assert VaspCfg(incar={"KSPACING": 0.5}).mesh(cu) == (4, 4, 4)
    assert VaspCfg(incar={"KSPACING": 0.58}).mesh(cu) == (4, 4, 4)  # 1.7405 / 0.58 = 3.0008: rounded up
    assert VaspCfg(incar={"KSPACING": 0.59}).mesh(cu) == (3, 3, 3)
    assert VaspCfg(kpoint_density=2.0).mesh(cu) == VaspCfg(kpoint_density=2.0, incar={}).mesh(cu)


def test_dft_only_baseline_key_follows_the_basis_not_step7(tmp_path):
    """A variant that changes the ACE basis or fit budget must refit the DFT-only baseline
    (a stale one would compare a new pipeline ACE against the old basis); step 7's weights
    must not (tuning them re-runs the evaluation, and the baseline does not depend on them)."""
    from pyacemaker_hpc.steps.evaluate import dft_only_fit_key

    def key(**pacemaker):
        data = {**MINIMAL, "pacemaker": pacemaker}
        return dft_only_fit_key(load_config(_write(tmp_path, data)), {"Cu": -1.0}, "labels")

    base = key()
    assert key(preset="medium") != base
    assert key(max_iterations=600) != base
    assert key(cutoff=6.0) != base
    assert key(select_weight_dft=[30, 300]) == base
    assert key(delta_max_iterations=50) == base
    assert dft_only_fit_key(load_config(_write(tmp_path, MINIMAL)), {"Cu": -2.0}, "labels") != base


def test_teacher_shift_auto_resolves_by_element_count_and_explicit_values_stay(tmp_path):
    """``mace.shift_teacher_to_dft: auto`` (the default) is resolved at load, so the step-5
    input hash and the recorded config carry the value that ran: on for an alloy (one
    energy level per element to put on the DFT picks), off for one element; a bad value
    names the key."""
    import copy

    from pyacemaker_hpc.config import config_text

    binary = copy.deepcopy(MINIMAL)
    binary["system"] = {"elements": ["Cu", "Au"],
                        "prototypes": [{"element": "Cu", "structure": "l12", "elements": ["Cu", "Au"], "a": 3.79}]}
    assert load_config(_write(tmp_path, MINIMAL)).mace.shift_teacher_to_dft is False
    cfg = load_config(_write(tmp_path, binary))
    assert cfg.mace.shift_teacher_to_dft is True
    assert "shift_teacher_to_dft: true" in config_text(cfg)
    for given in (False, True):
        data = copy.deepcopy(binary if not given else MINIMAL)
        data["mace"] = {"shift_teacher_to_dft": given}
        assert load_config(_write(tmp_path, data)).mace.shift_teacher_to_dft is given
    bad = copy.deepcopy(MINIMAL)
    bad["mace"] = {"shift_teacher_to_dft": "sometimes"}
    assert "mace.shift_teacher_to_dft" in _err(tmp_path, bad)


def test_ace_preset_auto_grows_the_basis_for_alloys_and_explicit_presets_stay(tmp_path):
    """``pacemaker.preset: auto`` (the default) is resolved at load: ``small`` (30 functions
    per element) for one element, ``medium`` (100) for two or more, where the cross terms
    need them; the recorded config carries the resolved preset, an explicit one is kept,
    and a bad value names the key."""
    import copy

    from pyacemaker_hpc.config import config_text
    from pyacemaker_hpc.trainer.pacemaker import PacemakerTrainer

    binary = copy.deepcopy(MINIMAL)
    binary["system"] = {"elements": ["Cu", "Au"],
                        "prototypes": [{"element": "Cu", "structure": "l12", "elements": ["Cu", "Au"], "a": 3.79}]}
    unary = load_config(_write(tmp_path, MINIMAL))
    assert unary.pacemaker.preset == "small"
    alloy = load_config(_write(tmp_path, binary))
    assert alloy.pacemaker.preset == "medium"
    assert "preset: medium" in config_text(alloy)
    assert PacemakerTrainer(alloy.pacemaker, ["Cu", "Au"]).functions_per_element == 100
    assert PacemakerTrainer(unary.pacemaker, ["Cu"]).functions_per_element == 30
    data = copy.deepcopy(binary)
    data["pacemaker"] = {"preset": "small"}
    assert load_config(_write(tmp_path, data)).pacemaker.preset == "small"
    bad = copy.deepcopy(MINIMAL)
    bad["pacemaker"] = {"preset": "huge"}
    assert "pacemaker.preset" in _err(tmp_path, bad)
    # a trainer built from a bare PacemakerCfg (no Config around it) applies the same rule
    from pyacemaker_hpc.config import PacemakerCfg
    assert PacemakerTrainer(PacemakerCfg(), ["Au", "Cu"]).functions_per_element == 100
    assert PacemakerTrainer(PacemakerCfg(), ["Cu"]).functions_per_element == 30


def test_one_element_takes_the_large_budget_profile_from_40_planned_dft_labels(tmp_path, monkeypatch):
    """One element: ``small`` basis and the multihead teacher while step 2 plans fewer than
    40 DFT labels (the quickstart's 15), from 40 (target_points x (1 - uncertainty_threshold))
    the ``medium`` basis and a naive teacher on every label for 150 epochs, where Cu's final
    ACE measured 4.9 -> 3.8 meV/A; keys the user set stay; the plain loop counts its
    ``dft_budget``."""
    import copy
    from pathlib import Path

    from pyacemaker_hpc.config import LARGE_BUDGET_DFT_LABELS, config_text

    def loaded(target, threshold, distill=True, budget=None, **sections):
        data = copy.deepcopy({**MINIMAL, **sections})
        dist = data.setdefault("distillation", {})
        dist["enable_mace_distillation"] = distill
        dist["step1_direct_sampling"] = {"target_points": target}
        dist["step2_active_learning"] = {"uncertainty_threshold": threshold, "dft_calculator": "ASE"}
        if budget is not None:
            data["active_learning"] = {"dft_budget": budget, "initial_dft": 10}
        return load_config(_write(tmp_path, data))

    assert LARGE_BUDGET_DFT_LABELS == 40
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the quickstart's model paths are relative
    quick = load_config("configs/quickstart.yaml")
    assert quick.planned_dft_labels == 15 and quick.pacemaker.preset == "small"
    small, big = loaded(78, 0.5), loaded(80, 0.5)
    assert small.planned_dft_labels == 39
    assert small.pacemaker.preset == "small"
    assert big.pacemaker.preset == "medium"
    assert loaded(40, 0.75, distill=False, budget=30).pacemaker.preset == "small"
    assert loaded(40, 0.75, distill=False, budget=80).pacemaker.preset == "medium"
    assert (small.mace.finetune.method, small.mace.finetune.valid_fraction) == ("multihead", 0.15)
    assert small.distillation.step3_mace_finetune.epochs == 50
    assert (big.mace.finetune.method, big.mace.finetune.valid_fraction) == ("naive", 0.0)
    assert big.distillation.step3_mace_finetune.epochs == 150
    assert "method: naive" in config_text(big) and "epochs: 150" in config_text(big)
    assert load_config(_write(tmp_path, config_text(big), "again.yaml")).mace.finetune.method == "naive"
    kept = loaded(80, 0.5, mace={"finetune": {"method": "multihead"}}, pacemaker={"preset": "small"})
    assert (kept.mace.finetune.method, kept.pacemaker.preset) == ("multihead", "small")
    assert kept.distillation.step3_mace_finetune.epochs == 50
    assert loaded(80, 0.5, mace={"finetune": {"valid_fraction": 0.2}}).mace.finetune.valid_fraction == 0.2
    alloy = {"elements": ["Cu", "Au"], "prototypes": [{"element": "Cu", "structure": "fcc"}]}
    assert loaded(80, 0.5, system=alloy).mace.finetune.method == "multihead"


def test_e0_dict_missing_an_element_is_refused_at_load(tmp_path):
    """Step 3 would otherwise stop on it only after step 2 had spent the DFT calls."""
    alloy = {"elements": ["Cu", "Au"], "prototypes": [{"element": "Cu", "structure": "fcc"}]}
    data = {**MINIMAL, "system": alloy, "mace": {"finetune": {"method": "naive", "e0s": '{"Cu": -0.2}'}}}
    msg = _err(tmp_path, data)
    assert "mace.finetune.e0s" in msg and "['Au']" in msg
    data["mace"]["finetune"] = {"select_by_validation": [{"method": "naive", "e0s": '{"Au": -0.1}'}]}
    assert "select_by_validation[0].e0s" in _err(tmp_path, data) and "['Cu']" in _err(tmp_path, data)
    data["mace"]["finetune"] = {"method": "naive", "e0s": '{"Cu": -0.2, "79": -0.1}'}
    assert load_config(_write(tmp_path, data)).mace.finetune.e0s == '{"Cu": -0.2, "79": -0.1}'


def test_teacher_mean_fine_tunes_one_member_per_foundation(tmp_path):
    """mace.teacher: mean fine-tunes base_model and every committee model (cycling up to
    committee_size); first fine-tunes committee_size seeds of base_model."""
    from pathlib import Path

    from pyacemaker_hpc.steps.s3_finetune import member_foundations

    data = Path(__file__).resolve().parents[1] / "pyacemaker_hpc" / "data"
    s1, s2 = (str(data / f"cu_demo_foundation_s{k}.model") for k in (1, 2))
    mace = {"committee": [s1, s2], "committee_size": 2}
    cfg = load_config(_write(tmp_path, {**MINIMAL, "mace": mace}))
    assert cfg.mace.teacher == "first"
    assert member_foundations(cfg) == ["MACE-MP-0", "MACE-MP-0"]
    cfg = load_config(_write(tmp_path, {**MINIMAL, "mace": {**mace, "teacher": "mean"}}))
    assert member_foundations(cfg) == ["MACE-MP-0", s1, s2]
    cfg = load_config(_write(tmp_path, {**MINIMAL, "mace": {**mace, "teacher": "mean", "committee_size": 4}}))
    assert member_foundations(cfg) == ["MACE-MP-0", s1, s2, "MACE-MP-0"]
    assert "mace.teacher" in _err(tmp_path, {**MINIMAL, "mace": {"teacher": "median"}})
