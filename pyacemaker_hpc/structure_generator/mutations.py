"""Candidate structures for step 1: ideal prototypes and mutations of seed structures.

A DIRECT pool is only as good as the region it spans, so the generator mixes many kinds
of move (rattles at several amplitudes, isotropic/anisotropic strain, shear, supercells,
vacancies, substitutions, antisites and their combinations) evenly over every seed,
and throws away any geometry with atoms closer than ``min_distance_factor`` x the sum of
covalent radii: DFT on such a cell is wasted money (SCF trouble, core overlap).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, covalent_radii, reference_states

from ..config import GeneratorCfg, Prototype, SystemCfg, closest_pair_violation
from ..core.models import structure_uid

UNARY = ("fcc", "bcc", "hcp", "diamond", "sc")
BINARY = ("rocksalt", "b2", "l12")


# ----------------------------------------------------------------------------------------
# prototypes
def reference_volume_per_atom(symbol: str) -> float:
    """Volume per atom (A^3) of the element's ASE reference state.

    Elements whose reference state is not a bulk crystal (e.g. molecular gases) fall back
    to an fcc packing with nearest-neighbour distance = 2 x covalent radius.
    """
    try:
        at = bulk(symbol)
        return float(at.get_volume() / len(at))
    except Exception:  # noqa: BLE001 - ASE raises several kinds for non-bulk references
        d = 2.0 * covalent_radii[atomic_numbers[symbol]]
        return float(d ** 3 / math.sqrt(2.0))


#: atoms per conventional cell volume a^3 (hcp: per a^3 with ideal c/a)
_ATOMS_PER_A3 = {"fcc": 4.0, "bcc": 2.0, "sc": 1.0, "diamond": 8.0, "hcp": math.sqrt(2.0)}


def _unary(proto: Prototype) -> Atoms:
    sym, st = proto.element, proto.structure
    ref = reference_states[atomic_numbers[sym]] or {}
    cubic = st != "hcp"
    if proto.a is not None:
        a = proto.a
    elif ref.get("symmetry") == st:  # ASE knows this very lattice: use its constants
        return bulk(sym, st, cubic=cubic) if cubic else bulk(sym, st)
    else:  # another lattice of the same element: keep the reference volume per atom
        a = (reference_volume_per_atom(sym) * _ATOMS_PER_A3[st]) ** (1.0 / 3.0)
    if st == "hcp":
        return bulk(sym, "hcp", a=a, c=a * math.sqrt(8.0 / 3.0))
    return bulk(sym, st, a=a, cubic=True)


def _binary(proto: Prototype, system: SystemCfg) -> Atoms:
    els = list(proto.elements or [])
    if not els:
        others = [e for e in system.elements if e != proto.element]
        if not others:
            raise ValueError(f"prototype {proto.structure} needs two elements; system has only {system.elements}")
        els = [proto.element, others[0]]
    if len(els) != 2:
        raise ValueError(f"prototype {proto.structure} needs exactly two elements, got {els}")
    A, B = els
    vA, vB = reference_volume_per_atom(A), reference_volume_per_atom(B)
    st = proto.structure
    if st == "rocksalt":
        a = proto.a or (4.0 * (vA + vB)) ** (1.0 / 3.0)
        fcc = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
        return Atoms([A] * 4 + [B] * 4, scaled_positions=np.vstack([fcc, fcc + [.5, 0, 0]]) % 1.0,
                     cell=np.eye(3) * a, pbc=True)
    if st == "b2":
        a = proto.a or (vA + vB) ** (1.0 / 3.0)
        return Atoms([A, B], scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]],
                     cell=np.eye(3) * a, pbc=True)
    if st == "l12":  # A3B: B on the corner, A on the face centres
        a = proto.a or (3.0 * vA + vB) ** (1.0 / 3.0)
        return Atoms([B, A, A, A], scaled_positions=[[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]],
                     cell=np.eye(3) * a, pbc=True)
    raise ValueError(f"unknown binary prototype {st!r}")


def prototype_structures(system: SystemCfg) -> list[Atoms]:
    """Ideal cells for ``system.prototypes``, ``info['provenance']`` set.

    Conventional cubic cells (fcc 4 atoms, bcc 2, diamond 8, sc 1, rocksalt 8, B2 2,
    L1_2 4; hcp its 2-atom cell): big enough that a rattle or a vacancy means something,
    small enough for cheap DFT.

    Unary lattices come from ``ase.build.bulk``; without ``a`` the element's ASE reference
    lattice constant is used, or, for a lattice other than the reference one, the
    reference volume per atom (a Bain-path-like guess). Binary rocksalt / B2 / L1_2 (A3B)
    take ``Prototype.elements`` = [A, B] (default [element, next system element]); without
    ``a`` the cell volume is the sum of the elements' reference volumes (Vegard-like guess).
    """
    out = []
    for proto in system.prototypes:
        if proto.structure in UNARY:
            at = _unary(proto)
            tag = f"proto:{proto.structure}:{proto.element}"
        else:
            at = _binary(proto, system)
            tag = f"proto:{proto.structure}:{'-'.join(proto.elements or dict.fromkeys(at.get_chemical_symbols()))}"
        at.info = {"provenance": tag}
        out.append(at)
    return out


# ----------------------------------------------------------------------------------------
# mutations
class MutationGenerator:
    """StructureGenerator: mutations of seed structures, mixed round-robin over seeds x kinds.

    Kinds (``recipes()``, each a chain of primitive moves): rattle (Gaussian displacement,
    std per Cartesian component = each of ``cfg.rattle_amplitudes`` in turn), isotropic
    strain, anisotropic normal strain (|e_ii| <= strain_max), shear (|e_ij| <= shear_max),
    supercells from ``cfg.supercells``, one vacancy (cells with >= 4 atoms), and with two or
    more elements substitution of one atom and antisite swaps; most are combined with a
    rattle. A kind that cannot apply to a seed (vacancy in a 1-atom cell) is skipped, not
    counted as rejected. Overlapping geometries are rejected and counted in
    ``n_rejected`` / ``rejected_by_kind``. Same rng state -> same structures.
    """

    def __init__(self, cfg: GeneratorCfg, elements: list[str]):
        self.cfg = cfg
        self.elements = list(elements)
        self.n_rejected = 0
        self.rejected_by_kind: Counter = Counter()
        self.n_skipped = 0       # kind not applicable to that seed
        self.n_duplicates = 0
        self.generated_by_kind: Counter = Counter()

    # recipes ---------------------------------------------------------------------------
    def _supercells(self) -> list[tuple[int, int, int]]:
        out = []
        for sc in self.cfg.supercells:
            rep = tuple(int(x) for x in (sc * 3 if len(sc) == 1 else sc))
            if len(rep) != 3 or min(rep) < 1:
                raise ValueError(f"generator.supercells: expected three positive integers, got {sc}")
            if rep != (1, 1, 1) and rep not in out:
                out.append(rep)
        return out

    def recipes(self) -> list[tuple[str, ...]]:
        """The mutation kinds in use, in round-robin order."""
        c = self.cfg
        rat = ("rattle",) if c.rattle_amplitudes else ()
        r: list[tuple[str, ...]] = []
        if rat:
            r.append(rat)
        if c.strain_max > 0:
            r += [("strain_iso",), ("strain_aniso",), ("strain_iso", *rat), ("strain_aniso", *rat)]
        if c.shear_max > 0:
            r += [("shear",), ("shear", *rat)]
        if c.strain_max > 0 and c.shear_max > 0:
            r.append(("strain_aniso", "shear", *rat))
        if self._supercells():
            r += [("supercell", *rat)]
            if c.strain_max > 0:
                r.append(("supercell", "strain_aniso", *rat))
        if c.vacancies:
            r.append(("vacancy", *rat))
            if self._supercells():
                r.append(("supercell", "vacancy", *rat))
        if c.substitutions and len(self.elements) >= 2:
            r += [("substitution", *rat), ("antisite", *rat)]
            if self._supercells():
                r.append(("supercell", "substitution", *rat))
        return [x for x in dict.fromkeys(r) if x]  # unique, order kept

    # primitive moves --------------------------------------------------------------------
    def _apply(self, op: str, at: Atoms, rng: np.random.Generator, k: int):
        """(atoms, tag) after move ``op`` (``at`` may be changed in place); tag None when
        the move does not apply to this cell."""
        out = self._move(op, at, rng, k)
        return out if isinstance(out, tuple) else (at, out)

    def _move(self, op: str, at: Atoms, rng: np.random.Generator, k: int):
        c = self.cfg
        if op == "rattle":
            if len(at) < 2:  # moving the only atom of a cell is a mere translation
                return None
            amp = float(c.rattle_amplitudes[k % len(c.rattle_amplitudes)])
            at.positions += rng.normal(0.0, amp, size=at.positions.shape)
            return f"rattle{amp:g}"
        if op == "strain_iso":
            e = float(rng.uniform(-c.strain_max, c.strain_max))
            at.set_cell(at.cell * (1.0 + e), scale_atoms=True)
            return f"strain_iso{e:.3f}"
        if op == "strain_aniso":
            e = rng.uniform(-c.strain_max, c.strain_max, size=3)
            at.set_cell(at.cell @ np.diag(1.0 + e), scale_atoms=True)
            return f"strain_aniso{np.abs(e).max():.3f}"
        if op == "shear":
            s = rng.uniform(-c.shear_max, c.shear_max, size=3)
            eps = np.array([[0, s[0], s[1]], [s[0], 0, s[2]], [s[1], s[2], 0]])
            at.set_cell(at.cell @ (np.eye(3) + eps), scale_atoms=True)
            return f"shear{np.abs(s).max():.3f}"
        if op == "supercell":
            cells = self._supercells()  # cycles slower than the rattle amplitude: all pairs
            rep = cells[(k // max(1, len(c.rattle_amplitudes))) % len(cells)]
            return at.repeat(rep), "supercell" + "x".join(map(str, rep))
        if op == "vacancy":
            if len(at) < 4:
                return None
            del at[int(rng.integers(len(at)))]
            return "vac1"
        if op == "substitution":
            i = int(rng.integers(len(at)))
            old = at[i].symbol
            choices = [e for e in self.elements if e != old]
            if not choices:
                return None
            new = choices[int(rng.integers(len(choices)))]
            at[i].symbol = new
            return f"sub{old}-{new}"
        if op == "antisite":
            sym = np.array(at.get_chemical_symbols())
            if len(set(sym)) < 2:
                return None
            i = int(rng.integers(len(at)))
            others = np.flatnonzero(sym != sym[i])
            j = int(others[int(rng.integers(len(others)))])
            nums = at.numbers.copy()
            nums[i], nums[j] = nums[j], nums[i]
            at.numbers = nums
            return f"antisite{sym[i]}-{sym[j]}"
        raise ValueError(f"unknown mutation {op!r}")

    # -----------------------------------------------------------------------------------
    def generate(self, seeds: Sequence[Atoms], rng: np.random.Generator) -> list[Atoms]:
        """Up to ``cfg.n_candidates`` mutated structures, kinds mixed evenly over seeds.

        Attempt ``j`` uses seed ``j % n_seeds`` and kind ``(j // n_seeds) % n_kinds``, so
        every (seed, kind) pair recurs equally often; within a pair, rattle amplitudes cycle
        in order, and supercells more slowly, so that every (supercell, amplitude) pair occurs. Stops early when attempts run out (most candidates
        rejected), so the result may be shorter than asked.
        """
        seeds = list(seeds)
        recipes = self.recipes()
        n_target = self.cfg.n_candidates
        if not seeds or not recipes:
            return []
        S, R = len(seeds), len(recipes)
        max_attempts = 20 * n_target + 4 * S * R
        uses: Counter = Counter()
        seen: set[str] = set()
        out: list[Atoms] = []
        j = 0
        while len(out) < n_target and j < max_attempts:
            si, ri = j % S, (j // S) % R
            j += 1
            recipe = recipes[ri]
            k = uses[(si, ri)]
            uses[(si, ri)] += 1
            at = seeds[si].copy()
            at.calc = None
            parent = seeds[si].info.get("provenance")
            tags = []
            for op in recipe:
                at, tag = self._apply(op, at, rng, k)
                if tag is None:
                    break
                tags.append(tag)
            kind = "+".join(recipe)
            if len(tags) < len(recipe):
                self.n_skipped += 1
                continue
            if at.pbc.all():
                at.wrap()
            if closest_pair_violation(at, self.cfg.min_distance_factor):
                self.n_rejected += 1
                self.rejected_by_kind[kind] += 1
                continue
            uid = structure_uid(at)
            if uid in seen:
                self.n_duplicates += 1
                continue
            seen.add(uid)
            at.info = {"provenance": f"seed{si}:" + "+".join(tags), "mutation": kind, "seed_index": si,
                       "uid": uid}
            if parent:
                at.info["parent"] = str(parent)
            self.generated_by_kind[kind] += 1
            out.append(at)
        return out
