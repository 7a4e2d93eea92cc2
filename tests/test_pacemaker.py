"""Real tiny pacemaker fits (tensorpot, 10 functions, tens of BFGS steps) on EMT Cu data.

The "DFT" of the delta tests is a second, systematically different level of theory: EMT
with changed Cu parameters (stiffer, slightly larger lattice), so the base ACE fitted on
plain EMT ("surrogate") labels has a real, learnable error against it.
"""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
from ase.calculators.emt import EMT

import ase.calculators.emt as emt_module
from pyacemaker_hpc.config import PacemakerCfg
from pyacemaker_hpc.core.interfaces import Trainer
from pyacemaker_hpc.core.models import Label, LabelledSet
from pyacemaker_hpc.tools.toy_data import label_with, perturbed_bulk

pyace = pytest.importorskip("pyace")
from pyace import PyACECalculator  # noqa: E402

from pyacemaker_hpc.trainer import (PacemakerError, PacemakerTrainer, ace_calculator,  # noqa: E402
                                    delta_fit, extrapolation_grades, predict,
                                    reference_energies, to_dataframe)
from pyacemaker_hpc.trainer.pacemaker import rmse  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")
ITER = 40


class ShiftedEMT(EMT):
    """EMT with other Cu parameters: the tests' stand-in for DFT."""

    def initialize(self, atoms):
        old = emt_module.parameters["Cu"]
        p = list(old)
        p[1] *= 1.01   # s0: larger lattice
        p[2] *= 1.25   # V0: stiffer pair repulsion
        emt_module.parameters["Cu"] = tuple(p)
        try:
            super().initialize(atoms)
        finally:
            emt_module.parameters["Cu"] = old


def _trainer(**kw) -> PacemakerTrainer:
    cfg = PacemakerCfg(preset="tiny", max_iterations=ITER, delta_max_iterations=ITER,
                       **kw.pop("cfg", {}))
    return PacemakerTrainer(cfg, ["Cu"], threads=1, **kw)


@pytest.fixture(scope="module")
def surrogate() -> LabelledSet:
    return label_with(perturbed_bulk("Cu", n=24, seed=0))


@pytest.fixture(scope="module")
def dft_sets() -> tuple[LabelledSet, LabelledSet]:
    structures = perturbed_bulk("Cu", n=16, seed=7)
    return label_with(structures[:10], ShiftedEMT), label_with(structures[10:], ShiftedEMT)


@pytest.fixture(scope="module")
def base(surrogate, tmp_path_factory):
    wd = tmp_path_factory.mktemp("base")
    model = _trainer().fit(surrogate, str(wd), name="base")
    return model, wd


# ----------------------------------------------------------------------------------------
def test_delta_fit_budget_defaults_to_the_fresh_fit_budget():
    # step 7 fits the same DFT labels as the DFT-only ACE: by default it gets the same BFGS budget
    assert PacemakerTrainer(PacemakerCfg(max_iterations=77), ["Cu"]).delta_max_iterations == 77
    assert PacemakerCfg(max_iterations=77).delta_iterations == 77  # what step 7's input hash sees
    assert PacemakerTrainer(PacemakerCfg(max_iterations=77, delta_max_iterations=5),
                            ["Cu"]).delta_max_iterations == 5
    assert PacemakerTrainer(PacemakerCfg(), ["Cu"], delta_max_iterations=9).delta_max_iterations == 9


def test_reference_energies_and_dataframe_weights():
    ls = label_with(perturbed_bulk("Cu", n=3, seed=1))
    e0 = reference_energies(ls, ["Cu"])
    assert e0["Cu"] == pytest.approx(np.mean([lab.energy / 4 for lab in ls.labels]))
    # two elements: least squares recovers exact per-element energies
    from ase.build import bulk

    cells = [bulk("Cu", cubic=True), bulk("Cu", cubic=True).repeat((2, 1, 1))]
    alloy = bulk("Cu", cubic=True)
    alloy.symbols[:2] = "Au"
    cells.append(alloy)
    true = {"Au": -3.2, "Cu": -1.7}
    labs = [Label(energy=sum(true[s] for s in a.get_chemical_symbols()), forces=np.zeros((len(a), 3)))
            for a in cells]
    got = reference_energies(LabelledSet(cells, labs), ["Au", "Cu"])
    assert got == pytest.approx(true)

    # weights: a weight-w structure gets the loss share of w copies of itself
    ls2 = LabelledSet(cells, labs)
    w = np.array([1.0, 3.0, 2.0])
    df = to_dataframe(ls2, true, w)
    assert list(df["NUMBER_OF_ATOMS"]) == [4, 8, 4]
    assert np.allclose(df["energy_corrected"], 0.0)
    assert df["w_energy"].sum() == pytest.approx(1.0)
    assert np.allclose(df["w_energy"], w / w.sum())
    per_atom = np.concatenate(df["w_forces"].tolist())
    assert per_atom.sum() == pytest.approx(1.0)
    assert np.allclose(df["w_forces"][1], 3.0 / (1 * 4 + 3 * 8 + 2 * 4))
    # pacemaker's own normalisation leaves the columns as they are
    from pyace.preparedata import normalize_energy_forces_weights

    df2 = df.copy()
    normalize_energy_forces_weights(df2)
    assert np.allclose(df2["w_energy"], df["w_energy"])
    assert np.allclose(np.concatenate(df2["w_forces"].tolist()), per_atom)
    with pytest.raises(ValueError):
        to_dataframe(ls2, true, np.array([1.0, -1.0, 1.0]))
    # separate force weights: energies as w, forces as fw copies
    fw = np.array([1.0, 1.0, 5.0])
    df3 = to_dataframe(ls2, true, w, fw)
    assert np.allclose(df3["w_energy"], df["w_energy"])
    assert np.allclose(df3["w_forces"][2], 5.0 / (1 * 4 + 1 * 8 + 5 * 4))
    assert np.concatenate(df3["w_forces"].tolist()).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="force_weights"):
        to_dataframe(ls2, true, w, np.array([1.0, 1.0]))


def test_fit_produces_potential_files_and_metrics(base, surrogate):
    model, wd = base
    assert isinstance(_trainer(), Trainer)
    assert model.kind == "ace" and model.name == "base"
    for suffix in (".yaml", ".yace", ".asi"):
        assert len(model.files[suffix]) > 100, suffix
    m = model.metrics
    for key in ("train_rmse_e_meV_atom", "train_rmse_f_meV_A", "seconds", "e0_Cu", "iterations"):
        assert np.isfinite(m[key]), key
    assert m["iterations"] == ITER and m["n_train"] == len(surrogate) and m["has_active_set"] == 1
    assert m["train_rmse_f_meV_A"] < 400 and m["train_rmse_e_meV_atom"] < 50
    # the exported potential reproduces pacemaker's own last-iteration figures
    assert m["train_rmse_e_meV_atom"] == pytest.approx(m["pacemaker_rmse_e_meV_atom"], rel=1e-3)
    assert m["train_rmse_f_meV_A"] == pytest.approx(m["pacemaker_rmse_f_meV_A"], rel=1e-3)
    # reference energy passed explicitly, one E0 for the whole fit
    assert m["e0_Cu"] == pytest.approx(reference_energies(surrogate, ["Cu"])["Cu"])
    text = (wd / "input.yaml").read_text()
    assert "reference_energy" in text and "FinnisSinclairShiftedScaled" in text
    assert "number_of_functions_per_element: 10" in text


def test_exported_yace_and_yaml_equal_predict(base, dft_sets, tmp_path):
    model, _ = base
    structures = dft_sets[1].structures
    labels = predict(model, structures, str(tmp_path / "p"))
    paths = model.write(tmp_path / "files")
    e0 = model.metrics["e0_Cu"]
    for at, lab in zip(structures, labels):
        a = at.copy()
        a.calc = PyACECalculator(paths[".yace"])      # E0 inside the .yace: total energy
        assert a.get_potential_energy() == pytest.approx(lab.energy, abs=1e-9)
        assert np.allclose(a.get_forces(), lab.forces, atol=1e-9)
        b = at.copy()
        b.calc = PyACECalculator(paths[".yaml"])      # B-basis: relative to E0
        assert b.get_potential_energy() + len(b) * e0 == pytest.approx(lab.energy, abs=1e-8)
        assert lab.stress is not None and lab.stress.shape == (6,)
        c = at.copy()
        c.calc = ace_calculator(model, str(tmp_path / "c"), with_active_set=True)
        assert c.get_potential_energy() == pytest.approx(lab.energy, abs=1e-8)


def test_weights_reach_pacemaker_loss(base, surrogate, tmp_path):
    model, _ = base
    subset = list(range(4))
    w = np.ones(len(surrogate))
    w[subset] = 200.0
    wd = tmp_path / "weighted"
    weighted = _trainer().fit(surrogate, str(wd), name="weighted", weights=w)
    assert weighted.metrics["weighted"] == 1
    out = (wd / "pacemaker.out").read_text()
    assert "Both weighting columns" in out            # pacemaker took our columns as given
    with gzip.open(wd / "fitting_data_info.pckl.gzip", "rb") as fh:
        info = pickle.load(fh)
    we = info["w_energy"].to_numpy()
    assert we[0] / we[-1] == pytest.approx(200.0)
    sub = LabelledSet([surrogate.structures[i] for i in subset], [surrogate.labels[i] for i in subset])
    err_w = rmse(predict(weighted, sub.structures, str(tmp_path / "pw")), sub)
    err_0 = rmse(predict(model, sub.structures, str(tmp_path / "p0")), sub)
    # measured: 21 vs 59 meV/A on the subset; its energies were already near the basis limit
    assert err_w["rmse_f_meV_A"] < 0.6 * err_0["rmse_f_meV_A"], (err_w, err_0)
    assert err_w["rmse_e_meV_atom"] < 1.1 * err_0["rmse_e_meV_atom"], (err_w, err_0)


def test_weighted_refit_moves_toward_dft(base, surrogate, dft_sets, tmp_path):
    model, _ = base
    dft, held_out = dft_sets
    trainer = _trainer()
    refit = delta_fit(trainer, model, surrogate, dft, mode="weighted_refit", weight_dft=10.0,
                      workdir=str(tmp_path))
    m = refit.metrics
    assert m["continued"] == 1 and m["delta_mode"] == 0 and m["weight_dft"] == 10
    assert m["refit_from_scratch"] == 0
    assert m["dft_energy_loss_share"] == pytest.approx(100 / 124)   # 10 DFT x 10 vs 24
    assert m["dft_force_loss_share"] == pytest.approx(100 / 124)    # all cells have 4 atoms
    assert m["e0_Cu"] == pytest.approx(model.metrics["e0_Cu"])   # the base's energy scale
    assert (tmp_path / "refit" / "initial.yaml").is_file()
    assert "Potential settings is overwritten from arguments" in (
        tmp_path / "refit" / "pacemaker.out").read_text()           # -p initial.yaml
    assert m["dft_rmse_f_meV_A_after"] < 0.7 * m["dft_rmse_f_meV_A_before"]
    assert m["dft_rmse_e_meV_atom_after"] < 0.7 * m["dft_rmse_e_meV_atom_before"]
    before = rmse(predict(model, held_out.structures, str(tmp_path / "hb")), held_out)
    after = rmse(predict(refit, held_out.structures, str(tmp_path / "ha")), held_out)
    assert after["rmse_f_meV_A"] < before["rmse_f_meV_A"]
    assert after["rmse_e_meV_atom"] < before["rmse_e_meV_atom"]


def test_refit_starts_from_scratch_when_the_base_is_no_prior(surrogate, dft_sets, tmp_path):
    """A base whose forces on the DFT cells are off by more than those forces themselves
    (here: fitted to surrogate forces x 50) is no starting point: step 7 fits surrogate +
    DFT from scratch, and lands below where it started."""
    from pyacemaker_hpc.trainer.delta import is_prior

    dft, _ = dft_sets
    wild = LabelledSet(surrogate.structures, [Label(energy=lab.energy, forces=50 * lab.forces, stress=lab.stress)
                                              for lab in surrogate.labels])
    bad = _trainer().fit(wild, str(tmp_path / "bad"), name="bad")
    scale = 1e3 * np.sqrt(np.mean(np.concatenate([lab.forces.ravel() for lab in dft.labels]) ** 2))
    assert is_prior({"rmse_f_meV_A": 0.9 * scale}, dft) and not is_prior({"rmse_f_meV_A": 1.1 * scale}, dft)
    refit = delta_fit(_trainer(), bad, surrogate, dft, mode="weighted_refit", weight_dft=10.0,
                      workdir=str(tmp_path / "delta"))
    m = refit.metrics
    assert m["dft_rmse_f_meV_A_before"] > scale
    assert m["refit_from_scratch"] == 1 and m["continued"] == 0
    assert not (tmp_path / "delta" / "refit" / "initial.yaml").exists()
    assert m["dft_rmse_f_meV_A_after"] < 0.2 * m["dft_rmse_f_meV_A_before"]


def test_residual_ships_one_potential_equal_to_base_plus_correction(base, surrogate, dft_sets,
                                                                       tmp_path):
    model, _ = base
    dft, held_out = dft_sets
    res = delta_fit(_trainer(), model, surrogate, dft, mode="residual", weight_dft=10.0,
                    workdir=str(tmp_path))
    m = res.metrics
    assert m["delta_mode"] == 1 and m["single_file"] == 1
    assert m["dft_rmse_f_meV_A_after"] < 0.5 * m["dft_rmse_f_meV_A_before"]
    assert m["dft_rmse_e_meV_atom_after"] < 0.5 * m["dft_rmse_e_meV_atom_before"]
    before = rmse(predict(model, held_out.structures, str(tmp_path / "hb")), held_out)
    after = rmse(predict(res, held_out.structures, str(tmp_path / "ha")), held_out)
    assert after["rmse_f_meV_A"] < 0.7 * before["rmse_f_meV_A"]
    assert after["rmse_e_meV_atom"] < 0.5 * before["rmse_e_meV_atom"]
    # ONE .yace (what LAMMPS pair_style pace reads) equals base + correction evaluated apart
    paths = res.write(tmp_path / "files", stem="delta")
    base_paths = model.write(tmp_path / "files", stem="base")
    assert "ndensity: 4" in res.files[".yace"].decode()
    assert "pair_style pace" in res.files[".usage.txt"].decode()
    for at in held_out.structures:
        at = at.copy()
        at.set_cell(at.cell * 0.97, scale_atoms=True)  # off the training data too
        parts = []
        for p in (paths[".yace"], base_paths[".yace"], paths[".correction.yace"]):
            a = at.copy()
            a.calc = PyACECalculator(p)
            parts.append((a.get_potential_energy(), a.get_forces()))
        assert parts[0][0] == pytest.approx(parts[1][0] + parts[2][0], abs=1e-8)
        assert np.allclose(parts[0][1], parts[1][1] + parts[2][1], atol=1e-8)
    gam = extrapolation_grades(res, held_out.structures, str(tmp_path / "g"))
    assert gam.shape == (len(held_out),) and np.all(np.isfinite(gam))
    # the pair form (hybrid/overlay, SumCalculator) gives the same numbers
    pair = type(res)(name="pair", kind="ace", metrics={"single_file": 0.0},
                     files={".yace": model.files[".yace"],
                            ".correction.yace": res.files[".correction.yace"]})
    one = predict(res, held_out.structures, str(tmp_path / "one"))
    two = predict(pair, held_out.structures, str(tmp_path / "two"))
    assert np.allclose([x.energy for x in one], [x.energy for x in two], atol=1e-8)
    assert np.allclose(np.concatenate([x.forces for x in one]),
                       np.concatenate([x.forces for x in two]), atol=1e-8)
    # a correction of 2 functions per element (rank 1 only: no radial coefficients of its
    # own) still merges into one exact file
    small = delta_fit(_trainer(), model, surrogate, dft, mode="residual", weight_dft=10.0,
                      workdir=str(tmp_path / "small"), correction_functions=2)
    assert small.metrics["single_file"] == 1 and small.metrics["merge_max_deviation_eV"] < 1e-8
    assert small.metrics["correction_n_functions"] <= 2


def test_weight_dft_chosen_by_cross_validation(base, surrogate, dft_sets, tmp_path):
    """Step 7's weight_dft by 2-fold CV on the DFT labels: a weight that leaves the DFT
    labels (shifted EMT, unlike the surrogate's) out of reach loses on the held-back folds."""
    from pyacemaker_hpc.trainer.delta import select_weight_dft

    model, _ = base
    dft, _ = dft_sets
    w, table = select_weight_dft(_trainer(), model, surrogate, dft, [0.01, 30.0], str(tmp_path), folds=2)
    assert [r["overrides"]["weight_dft"] for r in table] == [0.01, 30.0]
    assert sum(bool(r.get("chosen")) for r in table) == 1 and all(r["folds"] == 2 for r in table)
    assert w == 30.0, table
    assert table[1]["cv_energy_meV_atom"] < table[0]["cv_energy_meV_atom"]


def test_failed_fit_raises_with_pacemakers_message(tmp_path):
    with pytest.raises(PacemakerError, match="no usable training structures"):
        _trainer().fit(LabelledSet([], []), str(tmp_path / "empty"))
    broken = label_with(perturbed_bulk("Cu", n=2, seed=3))
    broken.labels[0] = Label.failed("scf did not converge")
    broken.labels[1].energy = float("nan")
    with pytest.raises(PacemakerError, match="no usable"):
        _trainer().fit(broken, str(tmp_path / "broken"))
    bad = _trainer(cfg={"extra_input": {"fit": {"optimizer": "NoSuchOptimizer"}}})
    with pytest.raises(PacemakerError, match="Unknown optimizer `NoSuchOptimizer`") as exc:
        bad.fit(label_with(perturbed_bulk("Cu", n=4, seed=3)), str(tmp_path / "bad"))
    assert "pacemaker failed (exit 1)" in str(exc.value)
    assert "Traceback" in str(exc.value)


def test_extrapolation_grades_high_for_far_off_structures(base, tmp_path):
    model, _ = base
    like = perturbed_bulk("Cu", n=6, seed=11)
    far = []
    for at in perturbed_bulk("Cu", n=4, seed=12):
        at.set_cell(at.cell * 0.8, scale_atoms=True)    # 20 % compressed: never seen
        far.append(at)
    g_like = extrapolation_grades(model, like, str(tmp_path))
    g_far = extrapolation_grades(model, far, str(tmp_path))
    assert g_like.shape == (6,) and g_far.shape == (4,)
    assert np.all(g_like < 3.0), g_like
    assert g_far.min() > 2 * g_like.max(), (g_like, g_far)
    no_asi = type(model)(name="x", kind="ace", files={k: v for k, v in model.files.items()
                                                         if k != ".asi"})
    with pytest.raises(ValueError, match="active set"):
        extrapolation_grades(no_asi, like, str(tmp_path / "x"))


def test_holdout_extrapolation_summary_separates_extrapolated_cells(base, tmp_path):
    """The evaluation's gamma summary on a real fit: 20 %-compressed cells the training set
    never saw exceed the threshold and carry the larger force error; the report line says so."""
    from pyacemaker_hpc.report import extrapolation_line
    from pyacemaker_hpc.steps.evaluate import extrapolation_summary, per_structure_errors

    model, _ = base
    cells = perturbed_bulk("Cu", n=6, seed=11)
    for at in perturbed_bulk("Cu", n=3, seed=12):
        at.set_cell(at.cell * 0.8, scale_atoms=True)
        cells.append(at)
    ref = label_with(cells)
    gamma = extrapolation_grades(model, cells, str(tmp_path / "g"))
    err = per_structure_errors(ref, predict(model, cells, str(tmp_path / "p")))
    threshold = float(np.sqrt(gamma[:6].max() * gamma[6:].min()))
    ext = extrapolation_summary(gamma, err, threshold)
    assert ext["n"] == 9 and ext["n_beyond"] == 3, gamma
    assert ext["force_rmse_beyond_meV_A"] > 2 * ext["force_rmse_within_meV_A"], ext
    assert ext["spearman_gamma_vs_max_force_error"] > 0  # the far cells top both rankings
    assert ext["max_gamma"] == pytest.approx(gamma.max())
    line = extrapolation_line(ext)
    assert "3 of 9 above" in line and f"{ext['force_rmse_beyond_meV_A']:.1f} meV/A beyond" in line
