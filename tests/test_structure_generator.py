"""Step 1 building blocks: prototypes, mutations, descriptors, DIRECT / entropy selection.

Real libraries throughout (ASE, pyace, a MACE model trained on the fly, scikit-learn).
"""
from __future__ import annotations

import os
import pickle
import re
import time
from collections import Counter

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from ase.build import bulk
from scipy.spatial.transform import Rotation

from pyacemaker_hpc.config import (DescriptorCfg, GeneratorCfg, Prototype, SystemCfg,
                                   closest_pair_violation)
from pyacemaker_hpc.core.models import structure_uid
from pyacemaker_hpc.core.interfaces import DescriptorCalculator, Selector, StructureGenerator
from pyacemaker_hpc.structure_generator.direct import (DirectSelector, EntropySelector,
                                                       RandomSelector, coverage,
                                                       feature_coverage_score, make_selector,
                                                       pca_space)
from pyacemaker_hpc.structure_generator.mutations import MutationGenerator, prototype_structures


# ----------------------------------------------------------------------------------------
# prototypes
def test_prototypes_lattices_and_compositions():
    protos = [Prototype(element="Cu", structure=s) for s in ("fcc", "bcc", "hcp", "diamond", "sc")]
    protos += [Prototype(element="Cu", structure="fcc", a=3.7)]
    protos += [Prototype(element="Cu", structure=s, elements=["Cu", "Au"]) for s in ("rocksalt", "b2", "l12")]
    protos += [Prototype(element="Cu", structure="b2", elements=["Cu", "Au"], a=3.0)]
    out = prototype_structures(SystemCfg(elements=["Cu", "Au"], prototypes=protos))
    assert len(out) == len(protos)
    fcc, bcc, hcp, dia, sc, fcc37, rs, b2, l12, b2a = out
    assert np.allclose(fcc.cell.lengths(), 3.61) and len(fcc) == 4  # ASE reference a
    assert np.allclose(fcc37.cell.lengths(), 3.7)
    v0 = fcc.get_volume() / len(fcc)
    for at in (bcc, hcp, dia, sc):  # other lattices keep the reference volume per atom
        assert at.get_volume() / len(at) == pytest.approx(v0, rel=1e-9)
    assert [len(a) for a in (bcc, hcp, dia, sc)] == [2, 2, 8, 1]
    assert Counter(rs.get_chemical_symbols()) == {"Cu": 4, "Au": 4}
    assert Counter(b2.get_chemical_symbols()) == {"Cu": 1, "Au": 1}
    assert Counter(l12.get_chemical_symbols()) == {"Cu": 3, "Au": 1}  # A3B
    assert np.allclose(b2a.cell.lengths(), 3.0)
    for at, p in zip(out, protos):
        assert at.info["provenance"].startswith(f"proto:{p.structure}:")
        assert at.pbc.all()
        assert closest_pair_violation(at, 0.6) is None, at.info


# ----------------------------------------------------------------------------------------
# mutations
def _cu_seeds():
    sysc = SystemCfg(elements=["Cu"], prototypes=[Prototype(element="Cu", structure=s)
                                                  for s in ("fcc", "bcc", "hcp")])
    return prototype_structures(sysc)


def _binary_seeds():
    sysc = SystemCfg(elements=["Cu", "Au"], prototypes=[
        Prototype(element="Cu", structure=s, elements=["Cu", "Au"]) for s in ("l12", "b2")]
        + [Prototype(element="Cu", structure="fcc")])
    return prototype_structures(sysc)


def _tags(at):
    prov = at.info["provenance"]
    m = re.match(r"seed(\d+):(.+)$", prov)
    assert m, prov
    return int(m.group(1)), m.group(2).split("+")


_OPS = {"strain_iso": "strain_iso", "strain_aniso": "strain_aniso", "shear": "shear",
        "supercell": "supercell", "vac": "vacancy", "sub": "substitution",
        "antisite": "antisite", "rattle": "rattle"}


def _op(tag):
    return next(op for prefix, op in _OPS.items() if tag.startswith(prefix))


def _value(tags, prefix):
    return next(t[len(prefix):] for t in tags if t.startswith(prefix))


def test_mutations_physical_sanity():
    cfg = GeneratorCfg(n_candidates=240, supercells=[[1, 1, 1], [2, 1, 1]], strain_max=0.05,
                       shear_max=0.04, rattle_amplitudes=[0.02, 0.05, 0.1])
    seeds = _binary_seeds()
    gen = MutationGenerator(cfg, ["Cu", "Au"])
    assert isinstance(gen, StructureGenerator)
    out = gen.generate(seeds, np.random.default_rng(7))
    assert len(out) == cfg.n_candidates
    kinds = Counter(a.info["mutation"] for a in out)
    # every kind is used, and evenly: round-robin over seeds x kinds
    assert set(kinds) == {"+".join(r) for r in gen.recipes()}
    assert {"substitution+rattle", "antisite+rattle", "supercell+vacancy+rattle"} <= set(kinds)
    amps = set()
    for at in out:
        si, tags = _tags(at)
        assert at.info["seed_index"] == si and at.info["mutation"] == "+".join(map(_op, tags))
        seed = seeds[si]
        assert at.info["uid"] == structure_uid(at)
        assert closest_pair_violation(at, cfg.min_distance_factor) is None
        rep = np.ones(3)
        if "supercell" in at.info["mutation"]:
            rep = np.array([int(x) for x in _value(tags, "supercell").split("x")])
        ref_cell = np.diag(rep) @ np.asarray(seed.cell)
        M = np.linalg.solve(ref_cell, np.asarray(at.cell))  # at.cell = ref_cell @ M
        off = M - np.diag(np.diag(M))
        kind = at.info["mutation"]
        if "strain_iso" in kind:
            e = float(_value(tags, "strain_iso"))
            assert np.allclose(M, M[0, 0] * np.eye(3)) and abs(M[0, 0] - 1) <= cfg.strain_max + 1e-12
            assert abs(M[0, 0] - 1 - e) <= 5e-4  # the tag says the strain (3 decimals)
            v = at.get_volume() / (seed.get_volume() * rep.prod())
            assert (1 - cfg.strain_max) ** 3 <= v <= (1 + cfg.strain_max) ** 3
        elif "strain_aniso" in kind and "shear" not in kind:
            assert np.allclose(off, 0) and np.abs(np.diag(M) - 1).max() <= cfg.strain_max + 1e-12
        elif "shear" in kind and "strain" not in kind:
            assert np.allclose(np.diag(M), 1) and np.allclose(M, M.T)
            assert np.abs(off).max() <= cfg.shear_max + 1e-12
        elif "strain_aniso" in kind and "shear" in kind:
            assert np.abs(M - np.eye(3)).max() <= (1 + cfg.strain_max) * cfg.shear_max + cfg.strain_max + 1e-12
        else:
            assert np.allclose(M, np.eye(3))
        # composition: preserved, or exactly as the move says
        c0 = Counter(seed.get_chemical_symbols() * int(rep.prod()))
        c1 = Counter(at.get_chemical_symbols())
        if "vacancy" in kind:
            assert len(at) == sum(c0.values()) - 1 and len(at) >= 3
            assert all(c1[el] <= c0[el] for el in c0) and sum((c0 - c1).values()) == 1
        elif "substitution" in kind:
            assert len(at) == sum(c0.values())
            assert sum((c0 - c1).values()) == 1 and sum((c1 - c0).values()) == 1
        else:  # antisite, strain, shear, rattle, supercell
            assert c1 == c0
        if kind == "rattle":  # same cell: displacement field of the rattle alone
            amp = float(_value(tags, "rattle"))
            amps.add(amp)
            d = at.get_scaled_positions() - seed.get_scaled_positions()
            d = (d - np.round(d)) @ np.asarray(at.cell)
            assert 0 < np.abs(d).max() <= 6 * amp
            assert 0.2 * amp < np.sqrt(np.mean(d ** 2)) < 2.5 * amp
    assert amps == set(cfg.rattle_amplitudes)  # each amplitude is used
    counts = [kinds[k] for k in kinds if k != "antisite+rattle"]  # antisite: not on fcc Cu
    assert max(counts) <= 2 * min(counts)


def test_mutations_deterministic_and_vacancy_needs_four_atoms():
    cfg = GeneratorCfg(n_candidates=120, supercells=[[1, 1, 1]])
    seeds = _cu_seeds()  # fcc 4 atoms, bcc 2, hcp 2
    a = MutationGenerator(cfg, ["Cu"]).generate(seeds, np.random.default_rng(3))
    b = MutationGenerator(cfg, ["Cu"]).generate(seeds, np.random.default_rng(3))
    c = MutationGenerator(cfg, ["Cu"]).generate(seeds, np.random.default_rng(4))
    assert [x.info["provenance"] for x in a] == [x.info["provenance"] for x in b]
    assert all(np.array_equal(x.positions, y.positions) and np.array_equal(x.cell, y.cell) for x, y in zip(a, b))
    assert any(not np.allclose(x.positions, y.positions) for x, y in zip(a, c))
    vac = [x for x in a if "vacancy" in x.info["mutation"]]
    assert vac and all(x.info["seed_index"] == 0 and len(x) == 3 for x in vac)
    assert not any("substitution" in x.info["mutation"] or "antisite" in x.info["mutation"] for x in a)


def test_aggressive_rattle_is_rejected_and_counted():
    cfg = GeneratorCfg(n_candidates=60, rattle_amplitudes=[0.5], strain_max=0.0, shear_max=0.0,
                       vacancies=False, substitutions=False, min_distance_factor=0.9,
                       supercells=[[1, 1, 1], [2, 2, 1]])
    gen = MutationGenerator(cfg, ["Cu"])
    out = gen.generate(_cu_seeds(), np.random.default_rng(0))
    assert gen.n_rejected > 0
    assert sum(gen.rejected_by_kind.values()) == gen.n_rejected
    assert set(gen.rejected_by_kind) <= {"rattle", "supercell+rattle"}
    assert gen.rejected_by_kind["supercell+rattle"] > 0  # 16-atom cells: more pairs to hit
    assert all(closest_pair_violation(at, 0.9) is None for at in out)
    assert len(out) <= cfg.n_candidates


# ----------------------------------------------------------------------------------------
# descriptors
def _moved(at, seed=1):
    """Rotated, translated and permuted copy of a periodic structure."""
    R = Rotation.random(random_state=seed).as_matrix()
    b = at.copy()
    b.set_cell(np.asarray(at.cell) @ R.T)
    b.positions = at.positions @ R.T + np.array([0.37, -1.21, 2.03])
    b.wrap()
    return b[np.random.default_rng(seed).permutation(len(b))]


def _test_cells():
    a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    a.rattle(0.1, seed=2)
    b = bulk("Cu", "hcp", a=2.55)
    b.rattle(0.05, seed=3)
    return [a, b]


def test_ace_descriptor_invariant_and_deterministic():
    from pyace import PyACECalculator

    from pyacemaker_hpc.structure_generator.descriptors import (AceDescriptor, ace_basis_config,
                                                                make_descriptor)

    d = make_descriptor("ace", ("mean", "std", "max", "min"), mace_model=None, elements=["Cu"])
    assert isinstance(d, AceDescriptor) and isinstance(d, DescriptorCalculator)
    assert 30 <= d.n_functions <= 60
    cells = _test_cells()
    X = d.compute_many(cells)
    assert X.shape == (2, 4 * d.n_functions) and np.all(np.isfinite(X))
    for at, x in zip(cells, X):
        assert np.abs(d.compute(_moved(at)) - x).max() < 1e-6
    assert np.abs(X[0] - X[1]).max() > 1e-3  # different structures, different vectors
    d2 = pickle.loads(pickle.dumps(d))  # rebuilt from plain arguments on another rank
    assert np.array_equal(d2.compute_many(cells), X)
    # projections do not depend on the basis coefficients
    calc_r = PyACECalculator(ace_basis_config(["Cu"], 5.0, coefs="random"))
    at = cells[0].copy()
    at.calc = calc_r
    assert at.get_potential_energy() != 0.0
    assert np.allclose(np.array(calc_r.projections), d.per_atom(cells[0]), atol=1e-10)

    # binary: pooled per species, composition appended
    db = AceDescriptor(["Cu", "Au"], pooling=("mean", "std"))
    ab = cells[0].copy()
    ab.symbols[[1, 5]] = "Au"
    xb = db.compute(ab)
    assert xb.shape == (2 * 2 * db.n_functions + 2,)
    assert np.allclose(xb[-2:], [0.75, 0.25])
    assert np.abs(db.compute(_moved(ab, seed=4)) - xb).max() < 1e-6


def test_mace_descriptor_invariant(tiny_mace_model):
    import torch

    torch.set_num_threads(1)
    from pyacemaker_hpc.structure_generator.descriptors import MaceDescriptor, make_descriptor

    d = make_descriptor("mace", ("mean", "std"), mace_model=str(tiny_mace_model), elements=["Cu"])
    assert isinstance(d, MaceDescriptor) and isinstance(d, DescriptorCalculator)
    cells = _test_cells()
    X = d.compute_many(cells)
    n_feat = d.per_atom(cells[0]).shape[1]
    assert X.shape == (2, 2 * n_feat) and np.all(np.isfinite(X))
    for at, x in zip(cells, X):
        assert np.abs(d.compute(_moved(at)) - x).max() < 1e-6
    assert np.abs(X[0] - X[1]).max() > 1e-6
    d2 = pickle.loads(pickle.dumps(d))
    assert np.allclose(d2.compute(cells[0]), X[0], atol=1e-12)
    with pytest.raises(FileNotFoundError):
        MaceDescriptor("/nonexistent/model.model")


# ----------------------------------------------------------------------------------------
# selection
def _clustered(seed=0):
    """A pool dominated by one dense region, with 24 rare regions of the same extent:
    random picks spend most of their budget on the dense one."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(25, 5))
    sizes = [1500] + list(rng.integers(4, 30, size=24))
    pts = np.vstack([c + rng.normal(0, 0.5, size=(s, 5)) for c, s in zip(centres, sizes)])
    # 10 descriptor columns: the 5 true ones and 5 correlated mixtures (PCA must cope)
    X = np.hstack([pts, pts @ rng.normal(size=(5, 5)) + 0.01 * rng.normal(size=pts.shape)])
    return X, np.repeat(np.arange(25), sizes)


@pytest.mark.parametrize("sel", [DirectSelector(), DirectSelector(k_per_cluster=3),
                                 EntropySelector(), RandomSelector()])
def test_selection_deterministic_exact_sorted(sel):
    X, _ = _clustered()
    assert isinstance(sel, Selector)
    a, b, c = sel.select(X, 40, seed=1), sel.select(X, 40, seed=1), sel.select(X, 40, seed=2)
    assert np.array_equal(a, b)
    assert len(a) == 40 and len(np.unique(a)) == 40 and np.all(np.diff(a) > 0)
    assert len(c) == 40
    assert np.array_equal(sel.select(X[:30], 50, seed=0), np.arange(30))
    assert len(sel.select(X, 0, seed=0)) == 0


def test_direct_and_entropy_cover_better_than_random():
    X, labels = _clustered()
    Z, pipe = pca_space(X, 0.95)
    assert Z.shape[1] < X.shape[1]
    radius = 1.0  # ~ the extent of one region in the standardised PCA space
    n = 50
    res = {}
    for name, sel in [("direct", DirectSelector()), ("entropy", EntropySelector()),
                      ("random", RandomSelector())]:
        idx = [sel.select(X, n, seed=s) for s in range(3)]
        res[name] = (np.mean([coverage(Z, i, radius) for i in idx]),
                     np.mean([len(np.unique(labels[i])) for i in idx]),
                     np.mean([EntropySelector().objective_value(Z, i) for i in idx]),
                     np.mean([feature_coverage_score(Z, i) for i in idx]))
    cov = {k: v[0] for k, v in res.items()}
    regions = {k: v[1] for k, v in res.items()}
    obj = {k: v[2] for k, v in res.items()}
    fcs = {k: v[3] for k, v in res.items()}
    assert min(fcs["direct"], fcs["entropy"]) > 1.5 * fcs["random"], res
    assert cov["direct"] > cov["random"] + 0.05, res
    assert cov["entropy"] > cov["random"] + 0.05, res
    assert regions["direct"] >= 24 and regions["entropy"] >= 24 and regions["random"] < 20, res
    assert obj["entropy"] > obj["direct"] > obj["random"], res


@pytest.mark.parametrize("k", [1, 2])
def test_direct_picks_points_nearest_cluster_centres(k):
    X, truth = _clustered()
    sel = DirectSelector(k_per_cluster=k)
    idx = sel.select(X, 24, seed=0)
    W, labels = sel.weighted_space(X), sel.last_labels
    assert sel.last_info["n_clusters"] == 24 // k
    assert len(np.unique(labels)) == 24 // k and len(np.unique(truth[idx])) >= 24 // k - 2
    for lab in np.unique(labels):
        m = np.flatnonzero(labels == lab)
        d = np.linalg.norm(W[m] - W[m].mean(0), axis=1)
        assert set(m[np.argsort(d)[:k]]) == set(idx[labels[idx] == lab])


def test_entropy_greedy_matches_naive_logdet_and_is_fast():
    rng = np.random.default_rng(5)
    Z = rng.normal(size=(60, 4))
    # a wide kernel (strong off-diagonal terms) checks the incremental Cholesky update
    for sel in (EntropySelector(bandwidth="median"), EntropySelector(bandwidth=1.0)):
        fast = sel.select_in_space(Z, 10, seed=3)
        # naive greedy: same start, then argmax of the log det of the enlarged set
        chosen = [int(np.random.default_rng(3).integers(60))]
        while len(chosen) < 10:
            gains = [sel.objective_value(Z, chosen + [j]) if j not in chosen else -np.inf for j in range(60)]
            chosen.append(int(np.argmax(gains)))
        assert np.array_equal(fast, np.sort(chosen))
        assert sel.objective_value(Z, fast) > sel.objective_value(Z, RandomSelector().select(Z, 10, 3)) + 1.0

    sel = EntropySelector()
    Xb = rng.normal(size=(2000, 30))
    Zb, _ = pca_space(Xb, 0.95)
    t = time.perf_counter()
    idx = sel.select_in_space(Zb, 100, seed=0)
    assert time.perf_counter() - t < 1.5 and len(idx) == 100


def test_make_selector_maps_objectives():
    cfg = DescriptorCfg(pca_variance=0.9, k_per_cluster=2)
    d = make_selector("direct", cfg)
    assert isinstance(d, DirectSelector) and d.pca_variance == 0.9 and d.k_per_cluster == 2
    assert isinstance(make_selector("maximize_entropy", cfg), EntropySelector)
    assert isinstance(make_selector("random", cfg), RandomSelector)
    with pytest.raises(ValueError):
        make_selector("kmeans", cfg)


def test_stratified_dft_pick_spreads_over_descriptor_space():
    """Step 2's ``mace.dft_pick: stratified``: same count as the top quantile, but every
    region of the selection gets a DFT anchor; the most uncertain structure stays first."""
    from pyacemaker_hpc.core.models import Uncertainty
    from pyacemaker_hpc.steps.s2_active_learning import pick_stratified, pick_uncertain

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.1, (30, 5)), rng.normal(5, 0.1, (30, 5))])  # two regions
    force_std = np.concatenate([rng.uniform(1, 2, 30), rng.uniform(0, 0.5, 30)])  # A uncertain
    unc = Uncertainty(np.zeros(60), force_std)
    top, strat = pick_uncertain(unc, 0.9), pick_stratified(unc, 0.9, X, seed=0)
    assert len(strat) == len(top) == 6 and len(set(strat.tolist())) == 6
    assert all(i < 30 for i in top) and any(i >= 30 for i in strat) and any(i < 30 for i in strat)
    assert strat[0] == top[0] == int(np.argmax(force_std))
    assert np.array_equal(pick_stratified(unc, 0.9, X, seed=0), strat)  # deterministic
    from pyacemaker_hpc.steps.s2_active_learning import pick_random

    rnd = pick_random(unc, 0.9, seed=0)  # the control: same count, committee ignored
    assert len(rnd) == 6 and len(set(rnd.tolist())) == 6 and np.array_equal(rnd, pick_random(unc, 0.9, 0))
    assert not np.array_equal(rnd, pick_random(unc, 0.9, 1))
    from pyacemaker_hpc.steps.s2_active_learning import pick_direct

    dire = pick_direct(unc, 0.9, X, seed=0)  # DIRECT: both regions, committee ignored
    assert len(dire) == 6 and any(i >= 30 for i in dire) and any(i < 30 for i in dire)


def test_volume_anchors_put_both_ends_of_the_equation_of_state_among_the_dft_picks():
    """``mace.volume_anchors``: the most compressed and the most expanded cell replace the
    least uncertain picks (same count); a vacancy, which inflates the volume per atom but
    not the bonds, is not taken for an expanded cell; fewer than 4 picks stay as chosen."""
    from ase.build import bulk

    from pyacemaker_hpc.steps.s2_active_learning import bond_scale, with_volume_anchors

    base = bulk("Cu", "fcc", a=3.61, cubic=True)
    cells = []
    for k, strain in enumerate(np.linspace(-0.04, 0.04, 9)):
        a = base.copy()
        a.set_cell(a.cell * (1 + strain), scale_atoms=True)
        a.rattle(0.01, seed=k)
        cells.append(a)
    vacancy = base.copy()
    del vacancy[0]
    cells.append(vacancy)  # index 9: largest volume per atom, equilibrium bonds
    assert vacancy.get_volume() / len(vacancy) > max(c.get_volume() / len(c) for c in cells[:9])
    assert abs(bond_scale(vacancy) - bond_scale(base)) < 1e-9 and bond_scale(cells[8]) > bond_scale(vacancy)
    picks = np.array([4, 5, 3, 6, 2])  # most uncertain first, both ends missing
    out = with_volume_anchors(picks, cells)
    assert len(out) == 5 and set(out.tolist()) == {4, 5, 3, 0, 8}  # 6 and 2 (least uncertain) gave way
    assert out[0] == 4  # the most uncertain pick stays first
    assert np.array_equal(with_volume_anchors(np.array([0, 8, 4, 5]), cells), [0, 8, 4, 5])  # already there
    assert np.array_equal(with_volume_anchors(np.array([4, 5, 3]), cells), [4, 5, 3])  # too few picks
    from ase import Atoms

    lone = Atoms("Cu", positions=[[0, 0, 0]], cell=[20, 20, 20], pbc=False)  # no bonds: never an anchor
    assert np.isnan(bond_scale(lone))
    assert set(with_volume_anchors(picks, cells + [lone]).tolist()) == {4, 5, 3, 0, 8}


def test_equilibrium_anchor_is_the_least_distorted_cell_at_the_seeds_bond_scale():
    """``mace.equilibrium_anchor``: besides both ends, the cell nearest an ideal lattice at
    the seeds' bond scale joins the picks; a strongly rattled cell at that volume does not
    count as one, nor does an ideal but strained cell."""
    from ase.build import bulk

    from pyacemaker_hpc.steps.s2_active_learning import bond_spread, with_volume_anchors

    seed = bulk("Cu", "fcc", a=3.61, cubic=True)
    cells = []
    for k, (strain, rattle) in enumerate([(-0.05, 0.02), (0.0, 0.15), (0.0, 0.1), (0.02, 0.0),
                                          (0.0, 0.01), (0.05, 0.02), (-0.02, 0.12)]):
        a = seed.copy()
        a.set_cell(a.cell * (1 + strain), scale_atoms=True)
        if rattle:
            a.rattle(rattle, seed=k)
        cells.append(a)
    assert bond_spread(cells[3]) < 1e-9 < bond_spread(cells[4]) < bond_spread(cells[2])
    picks = np.array([1, 2, 6, 3])  # most uncertain first; neither end, nor cell 4
    assert set(with_volume_anchors(picks, cells).tolist()) == {1, 2, 0, 5}
    out = with_volume_anchors(picks, cells, equilibrium=[seed])
    assert len(out) == 4 and set(out.tolist()) == {1, 0, 5, 4}  # cell 4, not the strained ideal 3


def test_seed_anchors_add_one_ideal_cell_per_composition_and_keep_half_the_picks():
    """``mace.equilibrium_anchor: seeds``: the seed structures (one per composition) join the
    picks as indices past the selection, in place of the least uncertain picks, never more
    than leave half the picks to the committee."""
    from ase.build import bulk

    from pyacemaker_hpc.steps.s2_active_learning import one_per_composition, with_volume_anchors

    cu, au = bulk("Cu", "fcc", a=3.63, cubic=True), bulk("Au", "fcc", a=4.16, cubic=True)
    cu3au = cu.copy()
    cu3au[0].symbol = "Au"
    seeds = one_per_composition([cu, au, cu.copy(), cu3au])
    assert [a.get_chemical_formula() for a in seeds] == ["Cu4", "Au4", "AuCu3"]
    cells = []
    for k, strain in enumerate([-0.05, 0.0, 0.01, 0.02, 0.05, -0.01, 0.03, 0.0, -0.02, 0.015]):
        a = cu.copy()
        a.set_cell(a.cell * (1 + strain), scale_atoms=True)
        a.rattle(0.05, seed=k)
        cells.append(a)
    picks = np.array([1, 2, 3, 5, 6, 7, 8, 9])  # most uncertain first; neither end (0, 4)
    out = with_volume_anchors(picks, cells, seed_cells=seeds)
    assert len(out) == 8 and set(out.tolist()) == {1, 2, 3, 5, 0, 4, 10, 11}  # 2 ends + 2 seeds = half
    out = with_volume_anchors(np.arange(10)[::-1][:10], cells + cells, seed_cells=seeds)
    assert {20, 21, 22} <= set(out.tolist()) and len(out) == 10  # room for all three
    assert set(with_volume_anchors(picks, cells).tolist()) == {1, 2, 3, 5, 0, 4, 6, 7}  # off: as before


def test_pristine_ends_scale_the_nearest_seed_to_the_selections_extreme_bond_scales():
    """``mace.volume_anchors: pristine``: the two ends of the equation of state become the
    seed of the end cell's composition, isotropically scaled to that cell's bond scale (no
    rattling), and take the selection's ends' place among the picks."""
    from ase.build import bulk

    from pyacemaker_hpc.steps.s2_active_learning import (bond_scale, bond_spread, pristine_ends,
                                                         with_volume_anchors)

    cu, au = bulk("Cu", "fcc", a=3.63, cubic=True), bulk("Au", "fcc", a=4.16, cubic=True)
    cells = []
    for k, (base, strain) in enumerate([(cu, -0.05), (cu, 0.0), (au, 0.0), (au, 0.06), (cu, 0.02), (au, -0.01)]):
        a = base.copy()
        a.set_cell(a.cell * (1 + strain), scale_atoms=True)
        a.rattle(0.1, seed=k)
        cells.append(a)
    ends = pristine_ends(cells, [cu, au])
    assert [a.get_chemical_formula() for a in ends] == ["Cu4", "Au4"]
    for end, ref in zip(ends, (cells[0], cells[3])):
        assert bond_spread(end) < 1e-9 and abs(bond_scale(end) - bond_scale(ref)) < 1e-9
    assert ends[0].get_volume() < cu.get_volume() < au.get_volume() < ends[1].get_volume()
    picks = np.array([1, 2, 4, 5])
    assert set(with_volume_anchors(picks, cells, end_cells=ends).tolist()) == {1, 2, 6, 7}
    assert pristine_ends(cells, []) == []
