"""The config.yaml schema: typed, validated before any rank starts work.

Every error is one line that names the key or the file (``ConfigError``). Relative paths
are resolved against the current working directory, as pacemaker and mace do (under Slurm
that is the submission directory).
"""
from __future__ import annotations

import ast
import difflib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: names mace's foundation-model loader knows (mace.calculators.foundations_models);
#: anything else in ``base_model`` must be an existing file. "MACE-MP-0" is ours: it maps to
#: "medium" (mace_mp(model=None) would give medium-mpa-0).
MACE_FOUNDATION_NAMES = {
    "MACE-MP-0", "small", "medium", "large", "medium-mpa-0", "small-0b", "medium-0b", "small-0b2",
    "medium-0b2", "large-0b2", "medium-0b3", "medium-omat-0", "mace-matpes-pbe-0",
    "mace-matpes-r2scan-0", "mh-0", "mh-1",
}


class ConfigError(ValueError):
    """A one-line, user-facing configuration error."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------------------
# distillation: the seed's block, exactly these keys and defaults
class Step1(_Strict):
    target_points: int = Field(100, gt=0)
    objective: Literal["maximize_entropy", "direct", "random"] = "maximize_entropy"


class Step2(_Strict):
    #: quantile (0..1) of the committee force disagreement over the step-1 selection above
    #: which a structure goes to DFT: 0.8 sends the most uncertain 20 %.
    uncertainty_threshold: float = Field(0.8, ge=0.0, le=1.0)
    dft_calculator: str = "VASP"

    @field_validator("dft_calculator")
    @classmethod
    def _known_calculator(cls, v: str) -> str:
        if v.lower() not in {"vasp", "gpaw", "ase"}:
            raise ValueError(f"must be VASP, GPAW or ASE (got {v!r})")
        return v


class Step3(_Strict):
    base_model: str = "MACE-MP-0"
    epochs: int = Field(50, gt=0)


class Step4(_Strict):
    target_points: int = Field(1000, gt=0)
    method: Literal["mace_md"] = "mace_md"


class Step7(_Strict):
    enable: bool = True
    #: weight of one DFT structure's energy against one teacher-labelled structure's; 300
    #: measured best on Cu (RPBE stand-in, 3 seeds, 10/20 calls, 300 teacher cells; 100 and
    #: 1000 lost or tied; README "Cu learning curve"). Its loss share grows with the DFT calls
    weight_dft: float = Field(300.0, gt=0)


class Distillation(_Strict):
    enable_mace_distillation: bool = True
    step1_direct_sampling: Step1 = Step1()
    step2_active_learning: Step2 = Step2()
    step3_mace_finetune: Step3 = Step3()
    step4_surrogate_sampling: Step4 = Step4()
    step7_pacemaker_finetune: Step7 = Step7()


# ----------------------------------------------------------------------------------------
class Prototype(_Strict):
    element: str
    structure: Literal["fcc", "bcc", "hcp", "diamond", "sc", "rocksalt", "b2", "l12"] = "fcc"
    a: Optional[float] = Field(None, gt=0)
    elements: Optional[list[str]] = None  # for binary prototypes (rocksalt, b2, l12)


class SystemCfg(_Strict):
    elements: list[str] = Field(min_length=1)
    seed_structures: list[str] = []
    prototypes: list[Prototype] = []


class CampaignCfg(_Strict):
    path: str = "campaign.h5"
    workdir: str = "work"
    output_dir: str = "results"


class GeneratorCfg(_Strict):
    """Step-1 candidate generation (structure_generator/mutations.py)."""

    n_candidates: int = Field(400, gt=0)
    rattle_amplitudes: list[float] = [0.02, 0.05, 0.1, 0.2]
    strain_max: float = Field(0.05, ge=0)
    shear_max: float = Field(0.04, ge=0)
    supercells: list[list[int]] = [[1, 1, 1]]
    vacancies: bool = True
    substitutions: bool = True
    min_distance_factor: float = Field(0.6, gt=0, le=1.5)


class DescriptorCfg(_Strict):
    kind: Literal["mace", "ace"] = "mace"
    pooling: list[Literal["mean", "std", "max", "min"]] = ["mean", "std"]
    pca_variance: float = Field(0.95, gt=0, le=1)
    k_per_cluster: int = Field(1, gt=0)


class _Kpoints(_Strict):
    """Gamma-centred Monkhorst-Pack k-points: from ``kpoint_density`` (ASE's definition:
    points per 2*pi/A, so the mesh follows each cell), or one fixed ``kpoint_mesh`` for
    every structure. A density mesh jumps when strain moves a cell across a rounding edge
    (4x4x4 -> 3x3x3 for fcc Au at density 2.0 under +1 % strain), and the energies of the
    two meshes differ by tens of meV/atom unless the density is converged: a training set
    of same-size cells on a fixed mesh is one smooth potential-energy surface."""

    kpoint_mesh: Optional[tuple[int, int, int]] = None

    @field_validator("kpoint_mesh")
    @classmethod
    def _positive_mesh(cls, v):
        if v is not None and min(v) < 1:
            raise ValueError(f"kpoint_mesh: three positive integers, got {list(v)}")
        return v

    def mesh(self, atoms) -> tuple[int, int, int]:
        """The k-point mesh this structure is computed on."""
        if self.kpoint_mesh is not None:
            return tuple(int(k) for k in self.kpoint_mesh)
        from ase.calculators.calculator import kpts2sizeandoffsets

        size, _ = kpts2sizeandoffsets(density=self.kpoint_density, gamma=True, atoms=atoms)
        return tuple(int(k) for k in size)

    #: keys added after labels were first cached, with the value those labels had: left
    #: out of ``identity`` at that value, so that earlier labels are still found
    _added_later: ClassVar[dict[str, Any]] = {"kpoint_mesh": None}

    def identity(self) -> dict:
        """What decides the numbers, for cache keys (``_added_later`` left out at its value)."""
        d = self.model_dump(mode="json")
        return {k: v for k, v in d.items() if k not in self._added_later or v != self._added_later[k]}


class VaspCfg(_Kpoints):
    incar: dict[str, Any] = {"encut": 520, "ediff": 1e-6, "ismear": 0, "sigma": 0.05,
                             "prec": "Accurate", "lreal": False, "nelm": 100}
    kpoint_density: float = Field(4.0, gt=0)  # ASE's density: k-points per 2*pi/A, Gamma-centred
    setups: dict[str, str] | str = "recommended"
    command: list[str] = ["vasp_std"]
    pp_path: Optional[str] = None  # default: $VASP_PP_PATH
    walltime_s: Optional[float] = Field(None, gt=0)

    def kspacing(self) -> float | None:
        """The INCAR's KSPACING (any case): with it VASP makes the mesh and no KPOINTS is written."""
        value = next((v for k, v in self.incar.items() if str(k).lower() == "kspacing"), None)
        return None if value is None else float(value)

    @model_validator(mode="after")
    def _one_mesh_source(self):
        if self.kpoint_mesh is not None and self.kspacing() is not None:
            raise ValueError("kpoint_mesh and incar.KSPACING both set: VASP would use KSPACING "
                             "(no KPOINTS file is written with it) and ignore kpoint_mesh; keep one")
        return self

    def mesh(self, atoms) -> tuple[int, int, int]:
        """As VASP computes it: ``N_i = max(1, ceil(|b_i| 2 pi / KSPACING))`` with KSPACING
        in the INCAR (b_i without 2 pi), else ``kpoint_mesh`` / ``kpoint_density``."""
        ks = self.kspacing()
        if ks is None:
            return super().mesh(atoms)
        import numpy as np

        b = np.linalg.norm(atoms.cell.reciprocal(), axis=1)
        return tuple(max(1, int(np.ceil(2 * np.pi * x / ks - 1e-9))) for x in b)


class GpawCfg(_Kpoints):
    ecut: float = Field(300.0, gt=0)
    xc: str = "PBE"
    kpoint_density: float = Field(2.0, gt=0)  # ASE's density: k-points per 2*pi/A
    smearing_width: float = Field(0.1, ge=0)
    # plane waves at a fixed cutoff miss the Pulay stress (the basis does not follow the
    # cell): at 300 eV fcc Au's stress pressure is 3.4 GPa below -dE/dV, Cu's 0.6 GPa.
    # "estimate": old GPAW's PW(dedecut="estimate") correction, which GPAW 26's new code
    # does not apply; "none": GPAW's stress as it is. Measured (Cu-Au, a stand-in trained on
    # corrected stresses, 20 calls, 3 seeds): the stress-read pressure gate stops firing on the
    # Pulay term and the teacher's Cu level gains 3 meV/atom, the final ACE is level (7.4 / 18.5
    # against 7.2 / 18.7 meV/atom / meV/A; 10 calls 11.6 / 24.2 against 10.8 / 25.6; README), so
    # "none" stays
    pulay_stress: Literal["estimate", "none"] = "none"
    extra: dict[str, Any] = {}

    _added_later: ClassVar[dict[str, Any]] = {**_Kpoints._added_later, "pulay_stress": "none"}


class AseCalcCfg(_Strict):
    import_path: str = "ase.calculators.emt.EMT"
    kwargs: dict[str, Any] = {}


class ExistingData(_Strict):
    """DFT-labelled structures a user already has (extxyz, pacemaker DataFrame pickle,
    vasprun.xml, or a folder of VASP runs), made with the same settings as ``dft:``."""

    path: str
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"


class DftCfg(_Strict):
    existing_data: list[ExistingData] = []
    vasp: VaspCfg = VaspCfg()
    gpaw: GpawCfg = GpawCfg()
    ase: AseCalcCfg = AseCalcCfg()
    max_retries: int = Field(2, ge=0)
    retry_failed_on_restart: bool = False
    max_force: float = Field(50.0, gt=0)  # eV/A: larger forces are a failed label
    #: one work directory per structure under here (default <campaign.workdir>/dft); campaigns
    #: with the same DFT settings may share it: a finished calculation of the same structure
    #: and settings (label.json) is reused there instead of being paid for again
    workdir: Optional[str] = None
    #: which energy a label carries: the force-consistent free energy (what the forces are
    #: the gradient of, and what pacemaker's pace_collect stores) or the sigma->0 extrapolation
    energy: Literal["free", "sigma0"] = "free"


def parse_e0s(e0s: str, method: str) -> str:
    """The ``--E0s`` argument for ``cfg.e0s``; ValueError for anything unusable.

    ``foundation`` / ``estimated`` / ``average`` pass through (``average`` not for
    multihead); a dict string (JSON or Python, keys atomic numbers or symbols) becomes
    mace's ``{Z: E0, ...}``.
    """
    from ase.data import atomic_numbers

    v = str(e0s).strip()
    if v.lower() in ("foundation", "estimated"):
        return v.lower()
    if v.lower() == "average":
        if method == "multihead":
            raise ValueError(
                "mace.finetune.e0s: 'average' cannot be used with multihead fine-tuning (mace "
                "refuses it: the replay head needs the foundation's reference). Use 'foundation' "
                "when your DFT settings match the foundation's, 'estimated' otherwise, or a dict "
                "of isolated-atom energies in your DFT settings, e.g. '{\"Cu\": -0.18}'.")
        return "average"
    try:
        d = json.loads(v)
    except ValueError:
        try:
            d = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            raise ValueError(f"mace.finetune.e0s: expected foundation, estimated, average or a dict "
                             f"{{element: E0 in eV}}, got {e0s!r}") from None
    if not isinstance(d, dict) or not d:
        raise ValueError(f"mace.finetune.e0s: expected a non-empty dict of E0s, got {e0s!r}")
    out = {}
    for k, val in d.items():
        z = atomic_numbers.get(k) if isinstance(k, str) and not k.isdigit() else int(k)
        if not z:
            raise ValueError(f"mace.finetune.e0s: unknown element {k!r}")
        out[int(z)] = float(val)
    return "{" + ", ".join(f"{z}: {e!r}" for z, e in sorted(out.items())) + "}"


class FinetuneCfg(_Strict):
    #: multihead (mace's replay fine-tuning: a second head keeps fitting the foundation's own
    #: labels) measured best on Cu with weight_dft_forces 100: final ACE forces 6.9 -> 6.4
    #: meV/A at 10 calls, 5.7 -> 5.5 at 20, level at 40-80; naive with the same weights lost
    #: (7.9, 5.9). Costs 3-6 min of CPU fine-tuning instead of 20-70 s (README). A foundation
    #: far from the DFT wants naive with valid_fraction 0 (the Cu-Au stand-in: configs/cuau.yaml)
    method: Literal["naive", "multihead"] = "multihead"
    #: multihead: pool structures the foundation labels for the replay head (offline replay)
    replay_size: int = Field(200, gt=0)
    #: E0s for fine-tuning: estimated (least-squares correction of the foundation's E0s; for a
    #: DFT reference unlike the foundation's), foundation, average (naive only), or a JSON dict
    e0s: str = "estimated"
    #: 100 measured best (Cu, 20 DFT labels): teacher energy RMSE 20.3 -> 1.5 meV/atom against
    #: 10, forces 7.3 -> 9.2 meV/A; the final ACE gained on both (README)
    energy_weight: float = Field(100.0, ge=0)
    forces_weight: float = Field(100.0, ge=0)
    #: 100 removes most of a foundation's pressure offset from the teacher (Cu, 10 calls, 3 seeds:
    #: final ACE energies 2.5 -> 2.0 meV/atom) but its forces lost (6.5 -> 6.9 meV/A): 10 stays (README)
    stress_weight: float = Field(10.0, ge=0)
    #: 0.001 measured best (Cu, RPBE stand-in, 3 seeds x 10/20/40/80 DFT calls): 0.01 made the
    #: foundation's forces worse at 10 calls and left the teacher's energy at 7-8 meV/atom;
    #: 0.001 took it to 3-5 and the final ACE was as good or better at every N (README)
    lr: float = Field(0.001, gt=0)
    batch_size: int = Field(4, gt=0)
    #: mace's --ema: the weights used (validated, saved) are an exponential moving average
    #: over steps with this decay; null: off
    ema_decay: Optional[float] = Field(None, gt=0, lt=1)
    valid_fraction: float = Field(0.15, ge=0, lt=1)
    seed: int = 1
    #: candidate settings (dicts of energy_weight, forces_weight, stress_weight, lr, e0s,
    #: method) cross-validated on the DFT labels before step 3 fine-tunes with the best;
    #: empty: the settings above are used as they are. [{method: naive}, {method: multihead}]
    #: lets the user's own labels say whether the foundation's replay helps
    select_by_validation: list[dict[str, float | str]] = []
    cv_folds: int = Field(3, ge=2)

    @model_validator(mode="after")
    def _tunable_keys(self):
        parse_e0s(self.e0s, self.method)
        numeric = ("energy_weight", "forces_weight", "stress_weight", "lr")
        for cand in self.select_by_validation:
            bad = sorted(set(cand) - set(numeric) - {"e0s", "method"})
            if bad or not cand:
                raise ValueError(f"select_by_validation: each candidate sets some of "
                                 f"{[*numeric, 'e0s', 'method']}; got {cand}")
            method = cand.get("method", self.method)
            for k, x in cand.items():
                if k == "method":
                    if x not in ("naive", "multihead"):
                        raise ValueError(f"select_by_validation: method must be naive or multihead; got {cand}")
                elif k == "e0s":
                    parse_e0s(str(x), method)  # the error names the key and the choices
                elif isinstance(x, str) or x < 0 or (k == "lr" and x == 0):
                    raise ValueError(f"select_by_validation: {k} must be a number, >= 0 (lr > 0); "
                                     f"got {cand}")
        return self

    def uses_multihead(self) -> bool:
        """True when a fit of step 3 (the configured one or a validated candidate) replays."""
        return "multihead" in (self.method, *(c.get("method") for c in self.select_by_validation))


class MdCfg(_Strict):
    temperatures: list[float] = [300.0, 800.0, 1500.0]
    strains: list[float] = [0.0]
    steps: int = Field(200, gt=0)
    timestep_fs: float = Field(2.0, gt=0)
    sample_interval: int = Field(10, gt=0)
    replicas_per_temperature: int = Field(2, gt=0)
    max_force: float = Field(20.0, gt=0)           # eV/A: frames above are discarded
    min_distance_factor: float = Field(0.6, gt=0)  # of covalent radii sum
    max_force_std: Optional[float] = Field(None, gt=0)  # eV/A committee spread cut
    include_pool: bool = True  # teacher-labelled pool structures join the surrogate set


class MaceCfg(_Strict):
    committee: list[str] = []  # extra committee members (names/paths) besides base_model
    committee_size: int = Field(1, gt=0)  # fine-tuned members (different seeds)
    #: who labels steps 5-7's surrogate set: "first" = the first fine-tuned member; "mean" =
    #: the mean of the fine-tuned members, one fine-tuned from each foundation (base_model and
    #: every ``committee`` model; at least ``committee_size`` members, cycling through them):
    #: independent foundations' errors partly cancel. Step-4 MD stays driven by the first.
    #: Measured (Cu-Au stand-in, 3 foundations, 3 seeds): the teacher gains (20 calls 10.0 /
    #: 20.9 -> 8.2 / 19.2 meV/atom / meV/A), the final ACE does not (20 calls 5.9 / 19.4 ->
    #: 6.2 / 19.4; 10 calls 9.0 / 22.5 -> 10.2 / 21.8, 10.4 / 20.2 without the pressure
    #: shift), so "first" stays (README)
    teacher: Literal["first", "mean"] = "first"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    default_dtype: Literal["float32", "float64"] = "float64"  # training, descriptors, step 2, evaluation
    #: dtype of the surrogate's bulk work: MD (step 4) and labelling (step 5). float32 as
    #: mace recommends for MD: labels differ from float64 by ~1e-6 eV/atom (far below any
    #: model's error) and label 1.5-2x faster on CPU (benchmarks/uncertainty.py)
    inference_dtype: Literal["float32", "float64"] = "float32"
    batch_size: int = Field(32, gt=0)
    #: how step 2 turns committee uncertainty into DFT jobs: "top" = the most uncertain
    #: (1 - uncertainty_threshold) share of the step-1 selection; "stratified" = as many,
    #: the most uncertain of each descriptor-space cluster (steps/s2_active_learning.py);
    #: "direct" = the cluster centres, "random" = uniform (both ignore the committee).
    #: Measured (Cu, 3 seeds, N = 10/20): stratified and random tie, top loses at N = 10 (README)
    dft_pick: Literal["top", "stratified", "direct", "random"] = "stratified"
    #: with >= 4 DFT picks, the selection's most compressed and most expanded cell take the
    #: place of the least uncertain picks, so the DFT energies span the equation of state.
    #: Measured (Cu, 3 seeds): final ACE energy 6.5 -> 2.5 meV/atom at 10 calls, 1.4 -> 0.9 at 20
    #: "pristine": the two ends are instead the seed nearest each end cell's composition,
    #: scaled isotropically to its bond scale (no rattling or shear). Measured (Cu-Au, with
    #: equilibrium_anchor seeds, 20 calls, 3 seeds): teacher 11.1 -> 10.0 meV/atom, final ACE
    #: 5.8 / 17.3 -> 6.3 / 19.4 (5.9 / 19.4 without the teacher pressure shift): not a default
    volume_anchors: bool | Literal["pristine"] = True
    #: with volume_anchors: the selection's cell closest to an ideal lattice at its median bond
    #: scale (spread of first-shell bond lengths) joins the anchors; uncertainty picks
    #: are strongly distorted (Cu: force RMS 1-7 eV/A against 0-1.9 on held-out cells).
    #: Measured (Cu, 10 calls, seeds 1 and 3): alone worse (6.2 -> 8.3, 5.9 -> 7.2 meV/A); with
    #: finetune.stress_weight 100 (3 seeds) 2.3 / 6.9 meV/atom / meV/A, no better than that alone (README)
    #: "seeds": instead, the seed structures themselves (system.prototypes / seed_structures,
    #: the first of each composition: for Cu-Au fcc Cu, fcc Au, L1_2 Cu3Au), up to half the picks
    #: with the volume anchors; the ideal cells whose energies set the elements' levels.
    #: Measured (Cu-Au, configs/cuau.yaml, final ACE meV/atom / meV/A): 20 calls, 3 seeds,
    #: 6.2 / 18.6 -> 5.8 / 17.3; 10 calls, 3 seeds, 9.0 / 22.5 -> 11.3 / 29.9 (half the picks
    #: become ideal, force-free cells): off by default (README)
    equilibrium_anchor: bool | Literal["seeds"] = False
    #: step 5: shift the teacher's energy labels by one least-squares constant per element
    #: onto the DFT labels of the step-2 picks, so that steps 6-7 fit one energy reference.
    #: "auto" (resolved at load): on for two or more elements, where the teacher's per-element
    #: levels are off against each other (Cu-Au, 10 calls, 3 seeds: Cu +4..+89, Au -5..-97
    #: meV/atom; final ACE 24.6 -> 13.5 meV/atom, forces level); off for one element, where
    #: it is one constant that step 7's DFT energies fix anyway (Cu, 3 seeds: level at 10 calls,
    #: 1.0 / 5.2 -> 1.2 / 5.8 meV/atom / meV/A at 20; README)
    shift_teacher_to_dft: bool | Literal["auto"] = "auto"
    #: step 5: move the teacher's labels by the mean DFT - teacher pressure on the step-2
    #: picks (energy - dP * V, stress - dP; forces unchanged). A foundation from another
    #: functional is off mostly by one pressure (RPBE stand-in vs PBE Cu: ~5.6 GPa, an E(V)
    #: slope of -35 meV/atom per A^3/atom), which fine-tuning on a few cells keeps in part.
    #: Measured (Cu, 3 seeds, 10 calls): final ACE energy 2.5 -> 1.6 meV/atom, forces level; at 20
    #: calls, where step 7's DFT energies already fix the slope, 1.0 / 5.2 -> 1.5 / 6.0 (README)
    teacher_pressure_shift: bool = True
    #: ... applied only when the picks resolve the offset: |mean| >= this many standard errors
    #: (Cu: 8.6 sigma on the two seeds that gained at 10 calls, <= 3.2 at 20 calls; 0 = always)
    teacher_pressure_min_sigma: float = Field(5.0, ge=0)
    #: ... read from the energies' volume slope on the picks or from their stresses. GPAW at
    #: 300 eV has a Pulay stress the energies lack (Au: 3.4 GPa), and on Cu-Au the stresses
    #: asked for -2.9 to -4.9 GPa where the energies found -0.2 to -2.4 (README)
    teacher_pressure_source: Literal["energy", "stress"] = "stress"
    finetune: FinetuneCfg = FinetuneCfg()
    md: MdCfg = MdCfg()


#: Planned DFT labels from which a one-element campaign's unset defaults take the large-budget
#: profile (Config._resolve_auto): the ``medium`` ACE basis and a teacher fine-tuned naive on
#: every label for 150 epochs. Cu, 40 calls, 3 seeds (README "Cu at 40 calls: the basis and
#: the teacher"): final ACE 1.1 / 4.9 -> 1.1 / 3.8 meV/atom / meV/A; medium alone 1.7 / 3.6
#: (the multihead teacher's energies pass into the larger basis); at 10 calls medium lost
#: (one seed: 3.8 / 5.9 -> 4.9 / 6.8) and multihead won at 10-20 (README)
LARGE_BUDGET_DFT_LABELS = 40


def auto_ace_preset(elements, dft_labels: int = 0) -> str:
    """``pacemaker.preset: auto``: ``medium`` for alloys, whose cross terms 30 functions per
    element cannot hold, and for one element once the campaign plans enough DFT labels for
    100 functions to pay; ``small`` below that."""
    if len(set(elements)) > 1 or dft_labels >= LARGE_BUDGET_DFT_LABELS:
        return "medium"
    return "small"


class PacemakerCfg(_Strict):
    #: ACE basis size (functions per element: tiny 10, small 30, medium 100, large 300).
    #: auto: medium for two or more elements, where 30 functions per element cannot hold the
    #: cross terms: Cu-Au (RPBE stand-in, 3 seeds, 40 calls) final ACE 6.5 / 26.8 -> 4.6 / 15.3
    #: meV/atom / meV/A, and the DFT-only ACE gains as much; for one element small below
    #: LARGE_BUDGET_DFT_LABELS planned DFT labels (Config.planned_dft_labels), medium from
    #: there (Cu at 40 calls: forces 4.9 -> 3.8 meV/A with the naive teacher; README)
    preset: Literal["tiny", "small", "medium", "large", "auto"] = "auto"
    number_of_functions_per_element: Optional[int] = Field(None, gt=0)
    cutoff: float = Field(5.0, gt=0)
    max_iterations: int = Field(300, gt=0)
    #: BFGS steps of step 7's fit (default: max_iterations, the DFT-only ACE's budget: at
    #: half of it the refit is still far from converged on the DFT labels; README)
    delta_max_iterations: Optional[int] = Field(None, gt=0)
    kappa: float = Field(0.3, ge=0, le=1)
    evaluator: Literal["tensorpot", "pyace"] = "tensorpot"
    delta_mode: Literal["weighted_refit", "residual"] = "weighted_refit"
    #: weighted_refit: weight of a DFT structure's forces (null: step 7's weight_dft, the
    #: weight of its energy). Lower keeps the many surrogate force labels in charge of forces
    #: while the DFT energies set the level: 100 against weight_dft 300 measured best on Cu
    #: (3 seeds x 10/20/40/80 calls; README "Cu learning curve"). The right value falls as the
    #: teacher's forces get better than the DFT cells alone can fit: Cu-Au (teacher ~20 meV/A,
    #: DFT-only ACE 32-66 at 20 calls) measured best at 30 (configs/cuau.yaml)
    weight_dft_forces: Optional[float] = Field(100.0, gt=0)
    #: residual: functions per element of the correction ACE (default: the preset's); with
    #: 10-40 DFT residuals a correction as large as the base over-fits them
    correction_functions: Optional[int] = Field(None, gt=0)
    #: weighted_refit: candidate weight_dft values cross-validated (cv_folds) on the DFT
    #: labels before step 7 refits with the best; empty: step 7's weight_dft as set
    select_weight_dft: list[float] = []
    cv_folds: int = Field(3, ge=2)
    reference_energy: Literal["auto", "zero"] = "auto"
    extra_input: dict[str, Any] = {}

    @property
    def delta_iterations(self) -> int:
        """Step 7's BFGS budget: ``delta_max_iterations``, unset = ``max_iterations``."""
        return self.delta_max_iterations or self.max_iterations


class EvaluationCfg(_Strict):
    holdout_file: Optional[str] = None  # extxyz with DFT labels, never used in training
    energy_key: str = "energy"
    forces_key: str = "forces"
    n_holdout: int = Field(0, ge=0)     # else: label this many fresh candidates with DFT
    compare_dft_only: bool = True
    #: extrapolation grade above which a held-out cell counts as outside the final ACE's
    #: active set in the evaluation (pacemaker's "worth DFT" level, ~5)
    gamma_threshold: float = Field(5.0, gt=0)


class ParallelCfg(_Strict):
    """Worker ranks per role group; 0 = every worker rank (groups may overlap, since the
    steps run one after another). ``train`` takes the last rank(s): give them the GPU."""

    descriptor: int = Field(0, ge=0)
    dft: int = Field(0, ge=0)
    mace: int = Field(0, ge=0)
    train: int = Field(1, ge=1)


class ActiveLearningCfg(_Strict):
    """The plain DFT loop (enable_mace_distillation: false)."""

    max_iterations: int = Field(5, gt=0)
    dft_budget: int = Field(200, gt=0)
    initial_dft: int = Field(20, gt=0)
    batch_size: int = Field(10, gt=0)
    gamma_threshold: float = Field(5.0, gt=0)
    n_candidates_per_iteration: int = Field(200, gt=0)


class Config(_Strict):
    seed: int = 42
    system: SystemCfg
    campaign: CampaignCfg = CampaignCfg()
    distillation: Distillation = Distillation()
    generator: GeneratorCfg = GeneratorCfg()
    descriptors: DescriptorCfg = DescriptorCfg()
    dft: DftCfg = DftCfg()
    mace: MaceCfg = MaceCfg()
    pacemaker: PacemakerCfg = PacemakerCfg()
    evaluation: EvaluationCfg = EvaluationCfg()
    parallel: ParallelCfg = ParallelCfg()
    active_learning: ActiveLearningCfg = ActiveLearningCfg()

    @model_validator(mode="after")
    def _resolve_auto(self):
        """Settings whose default depends on the system: resolved once, so every step,
        input hash and the recorded config see the value that ran."""
        alloy = len(set(self.system.elements)) > 1
        if self.mace.shift_teacher_to_dft == "auto":
            self.mace.shift_teacher_to_dft = alloy
        if self.pacemaker.preset == "auto":
            self.pacemaker.preset = auto_ace_preset(self.system.elements, self.planned_dft_labels)
        if not alloy and self.planned_dft_labels >= LARGE_BUDGET_DFT_LABELS:
            self._large_budget_teacher()
        return self

    def _large_budget_teacher(self) -> None:
        """One element with LARGE_BUDGET_DFT_LABELS planned (the caller checks): the teacher's
        unset fine-tuning keys become naive, every label training, 150 epochs. With 40 labels
        the replay head's pull toward the foundation costs more than it holds (Cu teacher 3.1-5.1 -> 2.3-6.1
        meV/atom, 5.9-6.8 -> 5.1-5.7 meV/A), and mace keeps the epoch with the lowest loss on
        the training labels, so longer training is what fits them; the medium basis then
        carries that teacher into the final ACE. Keys the user set are kept."""
        ft, s3 = self.mace.finetune, self.distillation.step3_mace_finetune
        if "method" in ft.model_fields_set or ft.select_by_validation:
            return
        ft.method = "naive"
        if "valid_fraction" not in ft.model_fields_set:
            ft.valid_fraction = 0.0
        if "epochs" not in s3.model_fields_set:
            s3.epochs = 150

    @property
    def planned_dft_labels(self) -> int:
        """The DFT labels the campaign is set up to train on: step 2's share of step 1's
        selection, or the plain loop's ``dft_budget`` (user labels imported on top and a
        pool smaller than the selection are not counted)."""
        d = self.distillation
        if not d.enable_mace_distillation:
            return self.active_learning.dft_budget
        share = 1.0 - d.step2_active_learning.uncertainty_threshold
        return max(1, int(round(d.step1_direct_sampling.target_points * share)))

    # convenience accessors -----------------------------------------------------------
    @property
    def dft_calculator(self) -> str:
        return self.distillation.step2_active_learning.dft_calculator.lower()

    def section_dict(self, *names: str) -> dict:
        """The named sections as plain data (what a step's inputs hash is made of)."""
        out = {}
        for n in names:
            obj: Any = self
            for part in n.split("."):
                obj = getattr(obj, part)
            out[n] = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
        return out


# ----------------------------------------------------------------------------------------
def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys at ``loc`` (used to suggest the nearest one for a typo)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            for c in candidates:  # list[Model]
                for a in getattr(c, "__args__", ()):
                    if isinstance(a, type) and issubclass(a, BaseModel):
                        nxt = a
        if nxt is None:
            return []
        cur = nxt
    return list(getattr(cur, "model_fields", {}).keys())


def _one_line(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = tuple(e["loc"])
    key = ".".join(str(p) for p in loc)
    if e["type"] == "extra_forbidden":
        near = difflib.get_close_matches(str(loc[-1]), _allowed_keys(Config, loc), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        return f"{source}: unknown key '{key}'{hint}"
    if e["type"] == "missing":
        return f"{source}: missing required key '{key}'"
    got = e.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: {key}: {e['msg']}{got_s}"


def parse_config(data: dict, source: str = "config") -> Config:
    """Validate a config mapping; raise ConfigError with one line on any problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None
    check_files_and_physics(cfg, source)
    return cfg


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a config.yaml; every problem is a one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{p}: malformed YAML at{where}: {problem}") from None
    return parse_config(data, str(p))


def config_text(cfg: Config) -> str:
    """Canonical YAML of the validated config (what the campaign records)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=True)


# ----------------------------------------------------------------------------------------
def is_foundation_name(base_model: str) -> bool:
    return base_model in MACE_FOUNDATION_NAMES


def check_files_and_physics(cfg: Config, source: str) -> None:
    """Checks pydantic cannot do: files exist, elements match, no overlapping atoms."""
    from ase.data import atomic_numbers

    for el in cfg.system.elements:
        if el not in atomic_numbers:
            raise ConfigError(f"{source}: system.elements: unknown element {el!r}")
    allowed = set(cfg.system.elements)
    for proto in cfg.system.prototypes:
        for el in [proto.element, *(proto.elements or [])]:
            if el not in allowed:
                raise ConfigError(
                    f"{source}: system.prototypes: element {el!r} is not in system.elements {sorted(allowed)}")
    if not cfg.system.seed_structures and not cfg.system.prototypes:
        raise ConfigError(f"{source}: system: give seed_structures or prototypes")

    for i, f in enumerate(cfg.system.seed_structures):
        if not Path(f).is_file():
            raise ConfigError(f"{source}: system.seed_structures[{i}]: file not found: {f}")
        _check_seed_file(f, allowed, cfg.generator.min_distance_factor, source)

    base = cfg.distillation.step3_mace_finetune.base_model
    uses_mace = cfg.distillation.enable_mace_distillation or cfg.descriptors.kind == "mace"
    if uses_mace and not is_foundation_name(base) and not Path(base).is_file():
        raise ConfigError(
            f"{source}: distillation.step3_mace_finetune.base_model: neither a MACE foundation "
            f"name ({', '.join(sorted(MACE_FOUNDATION_NAMES))}) nor an existing file: {base}")
    for i, m in enumerate(cfg.mace.committee):
        if not is_foundation_name(m) and not Path(m).is_file():
            raise ConfigError(f"{source}: mace.committee[{i}]: model file not found: {m}")

    if cfg.distillation.enable_mace_distillation:
        _check_e0_dicts(cfg, allowed, source)

    for i, ex in enumerate(cfg.dft.existing_data):
        if not Path(ex.path).exists():
            raise ConfigError(f"{source}: dft.existing_data[{i}].path: not found: {ex.path}")
    if cfg.evaluation.holdout_file and not Path(cfg.evaluation.holdout_file).is_file():
        raise ConfigError(f"{source}: evaluation.holdout_file: file not found: {cfg.evaluation.holdout_file}")

    if cfg.dft_calculator == "vasp":
        pp = cfg.dft.vasp.pp_path or os.environ.get("VASP_PP_PATH")
        if not pp:
            raise ConfigError(f"{source}: dft.vasp.pp_path: not set and VASP_PP_PATH is empty (POTCAR directory)")
        if not Path(pp).is_dir():
            raise ConfigError(f"{source}: dft.vasp.pp_path: POTCAR directory not found: {pp}")
        if not cfg.dft.vasp.command:
            raise ConfigError(f"{source}: dft.vasp.command: empty run command")
    if cfg.dft_calculator == "ase" and "." not in cfg.dft.ase.import_path:
        raise ConfigError(f"{source}: dft.ase.import_path: expected 'module.Class', got {cfg.dft.ase.import_path!r}")


def _check_e0_dicts(cfg: Config, allowed: set[str], source: str) -> None:
    """An E0 dict for step 3 names every element of the system: else step 3 would stop
    only after the DFT calls of step 2 were spent."""
    from ase.data import chemical_symbols

    ft = cfg.mace.finetune
    given = [("mace.finetune.e0s", ft.e0s, ft.method)]
    given += [(f"mace.finetune.select_by_validation[{i}].e0s", c["e0s"], c.get("method", ft.method))
              for i, c in enumerate(ft.select_by_validation) if "e0s" in c]
    for key, e0s, method in given:
        v = parse_e0s(str(e0s), method)
        if v.startswith("{"):
            missing = sorted(allowed - {chemical_symbols[z] for z in ast.literal_eval(v)})
            if missing:
                raise ConfigError(f"{source}: {key}: no E0 for {missing}, which system.elements holds")


def _check_seed_file(path: str, allowed: set[str], factor: float, source: str) -> None:
    from ase.io import read

    try:
        frames = read(path, index=":")
    except Exception as err:  # noqa: BLE001 - any reader error is the user's file
        raise ConfigError(f"{source}: system.seed_structures: cannot read {path}: {err}") from None
    for k, atoms in enumerate(frames):
        extra = set(atoms.get_chemical_symbols()) - allowed
        if extra:
            raise ConfigError(
                f"{source}: {path} frame {k}: elements {sorted(extra)} are not in system.elements {sorted(allowed)}")
        pair = closest_pair_violation(atoms, factor)
        if pair:
            i, j, d, dmin = pair
            raise ConfigError(
                f"{source}: {path} frame {k}: atoms {i} and {j} overlap ({d:.2f} A < {dmin:.2f} A = "
                f"{factor} x covalent radii)")


def closest_pair_violation(atoms, factor: float):
    """First pair closer than ``factor`` x the sum of covalent radii, or None."""
    import numpy as np
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    if len(atoms) < 2 and not atoms.pbc.any():
        return None
    rc = covalent_radii[atoms.numbers] * factor
    cut = float(2 * rc.max()) if len(rc) else 0.0
    if cut <= 0:
        return None
    i, j, d = neighbor_list("ijd", atoms, cut)
    bad = d < rc[i] + rc[j]
    if not np.any(bad):
        return None
    k = int(np.argmax(bad))
    return int(i[k]), int(j[k]), float(d[k]), float(rc[i[k]] + rc[j[k]])
