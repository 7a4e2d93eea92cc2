"""Step 5: the fine-tuned MACE labels the surrogate set in batches (mace's data loader),
chunks farmed over the MACE group and committed one chunk at a time.

With ``mace.teacher_pressure_shift`` and/or ``mace.shift_teacher_to_dft`` the teacher also
labels the DFT picks, and step 5 stores in ``/metrics/teacher_energy_shift`` what puts its
labels on the DFT picks': a uniform pressure offset (the mean DFT - teacher pressure: a
foundation trained on another functional is off mostly by one pressure, an E(V) slope that
fine-tuning on a few cells keeps) and one energy shift per element (least squares over the
picks' compositions, after the pressure term). Both leave forces untouched. The pressure
term is applied only when the picks resolve it (``mace.teacher_pressure_min_sigma``
standard errors); when nothing is applied, step 5's output hash is the uncorrected one and
steps 6-7 are not refitted. The stored labels stay the teacher's own (a resumed step never
shifts twice); :func:`teacher_labels` applies the correction where steps 6 and 7 read them."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from ase.units import GPa

from ..core.models import PENDING, Label, LabelledSet
from ..parallel import TaskFailed
from .context import Step, digest
from .s3_finetune import teacher_paths
from .tasks import mace_label_task

log = logging.getLogger("pyacemaker_hpc")
CHUNK = 100


class SurrogateLabelling(Step):
    name = "step5_surrogate_labelling"

    def inputs(self, ctx):
        out = {"upstream": [ctx.output_hash("step3_finetune"), ctx.output_hash("step4_surrogate_sampling")],
               "dtype": ctx.cfg.mace.inference_dtype}
        mace = ctx.cfg.mace
        if mace.teacher != "first":  # absent for the first member: campaigns made before keep their hash
            out["teacher"] = mace.teacher
        if mace.shift_teacher_to_dft:  # absent when off: campaigns made before keep their hash
            out["shift_to_dft"] = ctx.output_hash("step2_active_learning")
        if mace.teacher_pressure_shift:
            out["pressure_to_dft"] = [ctx.output_hash("step2_active_learning"), mace.teacher_pressure_min_sigma]
            if mace.teacher_pressure_source != "stress":  # campaigns made before keep their hash
                out["pressure_to_dft"].append(mace.teacher_pressure_source)
        return out

    def stale_outputs(self, ctx):
        return ["metrics/teacher_energy_shift"]

    def run(self, ctx):
        from ..oracle.mace_surrogate import pick_device

        cfg, camp = ctx.cfg, ctx.camp
        structures = camp.read_structures("surrogate")
        camp.init_labels("surrogate", "mace", keep_existing=ctx.resuming)
        status = [lab.status for lab in camp.read_labels("surrogate", "mace")]
        todo = [i for i, s in enumerate(status) if s == PENDING]
        chunks = [todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK)]
        teacher = teacher_paths(ctx)
        args = (teacher, pick_device(cfg.mace.device), cfg.mace.inference_dtype, cfg.mace.batch_size)

        def on_result(k, res):
            if isinstance(res, TaskFailed):
                raise RuntimeError(f"MACE labelling failed:\n{res.error}")
            camp.put_labels("surrogate", "mace", dict(zip(chunks[k], res)))

        ctx.farm.map("mace", [(k, mace_label_task, (*args, [structures[i] for i in c]))
                              for k, c in enumerate(chunks)], on_result, label="MACE labelling")
        labels = camp.read_labels("surrogate", "mace")
        log.info("[step5] %d structures labelled by the fine-tuned MACE", len(labels))
        energies = [f"{lab.energy:.8f}" for lab in labels]
        if cfg.mace.shift_teacher_to_dft or cfg.mace.teacher_pressure_shift:
            dft = camp.labelled_set("dft", "dft")
            on_dft = ctx.farm.run_one("mace", mace_label_task, *args, dft.structures)
            shift = fit_teacher_correction(dft, on_dft, cfg.system.elements,
                                           energy=cfg.mace.shift_teacher_to_dft,
                                           pressure=cfg.mace.teacher_pressure_shift,
                                           min_sigma=cfg.mace.teacher_pressure_min_sigma,
                                           source=cfg.mace.teacher_pressure_source)
            camp.write_json("metrics/teacher_energy_shift", shift)
            log.info("[step5] teacher labels moved onto the DFT picks: %s", shift)
            if is_null(shift):  # a closed pressure gate: the chain is the uncorrected one
                return digest(energies)
            return digest([energies, shift])
        return digest(energies)


def pressure_shift(dft: LabelledSet, teacher: list[Label], min_sigma: float = 0.0) -> dict:
    """The mean DFT - teacher pressure (eV/A^3; P = -trace(stress)/3) over the usable DFT
    picks that carry a stress, with its standard error and the RMS pressure difference
    before and after (GPa); ``pressure_eV_per_A3`` (what is applied) is zero unless the mean
    is at least ``min_sigma`` standard errors from zero (``applied``; fewer than 3 picks
    never resolve it unless ``min_sigma`` is 0). A model that is off by one pressure has an
    energy error of slope -dP per unit volume: E_teacher - dP * (V - n v_ref) and
    stress_teacher - dP * 1 remove it, v_ref (the picks' mean volume per atom) keeping the
    teacher's energy level where it was (-dP * V alone would move it by ~0.2 eV/atom at a
    few GPa)."""
    use = [(at, d, t) for at, d, t in zip(dft.structures, dft.labels, teacher)
           if d.ok and t.ok and _has_stress(d) and _has_stress(t) and at.pbc.all()]
    if not use:
        return {"pressure_eV_per_A3": 0.0, "applied": False, "n_stress": 0}
    dp = np.array([pressure(d.stress) - pressure(t.stress) for _, d, t in use])
    mean = float(dp.mean())
    sem = float(dp.std(ddof=1) / np.sqrt(len(dp))) if len(dp) > 1 else float("nan")
    v_ref = float(sum(at.get_volume() for at, _, _ in use) / sum(len(at) for at, _, _ in use))
    z = abs(mean) / max(sem, 1e-12) if len(dp) >= 3 else 0.0
    applied = bool(min_sigma == 0 or z >= min_sigma)
    return {"pressure_eV_per_A3": mean if applied else 0.0, "applied": applied, "z": float(z),
            "pressure_GPa": mean / GPa,
            "reference_volume_A3_per_atom": v_ref,
            "pressure_sem_GPa": sem / GPa, "n_stress": len(dp),
            "pressure_rms_before_GPa": float(np.sqrt(np.mean(dp ** 2)) / GPa),
            "pressure_rms_after_GPa": float(np.sqrt(np.mean((dp - mean) ** 2)) / GPa)}


def pressure_from_energies(dft: LabelledSet, teacher: list[Label], elements: list[str],
                           min_sigma: float = 0.0) -> dict:
    """The DFT - teacher pressure read from the energies: least squares of the per-atom
    energy difference on the picks' composition fractions (one level per element) and
    volume per atom, dP = -slope, with the slope's standard error. Plane-wave DFT at a
    practical cutoff carries a Pulay stress the energies do not show (GPAW 300 eV, PBE Au:
    stress pressure 0.3 GPa against -dE/dV 3.7 GPa), and pacemaker fits the energies, so
    the energies' slope is the one to move; the gate is :func:`pressure_shift`'s. Needs
    two picks more than fitted terms; the keys are :func:`pressure_shift`'s."""
    use = [(at, d, t) for at, d, t in zip(dft.structures, dft.labels, teacher) if d.ok and t.ok and at.pbc.all()]
    counts = _element_counts([at for at, _, _ in use], elements)
    n = counts.sum(axis=1)
    frac = counts[:, counts.sum(axis=0) > 0] / np.maximum(n, 1)[:, None]
    if len(use) < frac.shape[1] + 3:
        return {"pressure_eV_per_A3": 0.0, "applied": False, "n_energy": len(use), "source": "energy"}
    vol = np.array([at.get_volume() for at, _, _ in use]) / n
    diff = np.array([d.energy - t.energy for _, d, t in use]) / n
    v_ref = float(vol.mean())
    design = np.column_stack([frac, vol - v_ref])
    coef = np.linalg.lstsq(design, diff, rcond=None)[0]
    resid = diff - design @ coef
    var = float(resid @ resid) / (len(diff) - design.shape[1])
    sem = float(np.sqrt(var * np.linalg.pinv(design.T @ design)[-1, -1]))
    mean = -float(coef[-1])
    z = abs(mean) / max(sem, 1e-12)
    applied = bool(min_sigma == 0 or z >= min_sigma)
    before = diff - frac @ np.linalg.lstsq(frac, diff, rcond=None)[0]  # the levels alone
    return {"pressure_eV_per_A3": mean if applied else 0.0, "applied": applied, "z": float(z),
            "pressure_GPa": mean / GPa, "reference_volume_A3_per_atom": v_ref,
            "pressure_sem_GPa": sem / GPa, "n_energy": len(use), "source": "energy",
            "energy_rms_before_meV_atom": float(np.sqrt(np.mean(before ** 2)) * 1000),
            "energy_rms_after_meV_atom": float(np.sqrt(np.mean(resid ** 2)) * 1000)}


def energy_shift(dft: LabelledSet, teacher: list[Label], elements: list[str]) -> dict:
    """Per-element shifts (eV/atom) minimising sum_i (E_dft - E_teacher - n_i . shift)^2
    over the usable DFT picks (lstsq's minimum-norm answer when the compositions cannot
    separate the elements), with the per-atom RMS difference before and after."""
    pairs = [(at, d.energy, t.energy) for at, d, t in zip(dft.structures, dft.labels, teacher)
             if d.ok and t.ok]
    if not pairs:
        return {"shift_eV_per_atom": {el: 0.0 for el in elements}, "n_dft": 0}
    counts = _element_counts([at for at, _, _ in pairs], elements)
    diff = np.array([d - t for _, d, t in pairs])
    delta = np.linalg.lstsq(counts, diff, rcond=None)[0]
    n = counts.sum(axis=1)

    def rms(x):
        return float(np.sqrt(np.mean((x / n) ** 2)) * 1000)

    return {"shift_eV_per_atom": {el: float(v) for el, v in zip(elements, delta)}, "n_dft": len(pairs),
            "rms_before_meV_atom": rms(diff), "rms_after_meV_atom": rms(diff - counts @ delta)}


def fit_teacher_correction(dft: LabelledSet, teacher: list[Label], elements: list[str], *,
                           energy: bool, pressure: bool, min_sigma: float = 0.0,
                           source: str = "stress") -> dict:
    """What :func:`apply_correction` needs: the pressure term first (``source``: from the
    energies' volume slope, or from the stresses), then per-element energy shifts fitted on
    the pressure-corrected teacher energies; a term that is off is stored as zero."""
    if not pressure:
        out = {"pressure_eV_per_A3": 0.0}
    elif source == "energy":
        out = pressure_from_energies(dft, teacher, elements, min_sigma)
    else:
        out = pressure_shift(dft, teacher, min_sigma)
    moved = apply_correction(dft.structures, teacher, out)
    if energy:
        out.update(energy_shift(dft, moved, elements))
    else:
        out["shift_eV_per_atom"] = {el: 0.0 for el in elements}
    return out


def apply_correction(structures: list, labels: list[Label], shift: dict) -> list[Label]:
    """The teacher's labels moved by a stored correction: energy + sum of per-element shifts
    - dP * (V - n v_ref), stress - dP on the diagonal (P' = P + dP); forces unchanged."""
    per_el = shift.get("shift_eV_per_atom", {})
    dp = float(shift.get("pressure_eV_per_A3", 0.0))
    v_ref = float(shift.get("reference_volume_A3_per_atom", 0.0))
    out = []
    for at, lab in zip(structures, labels):
        if not lab.ok:
            out.append(lab)
            continue
        e = lab.energy + sum(per_el.get(s, 0.0) for s in at.get_chemical_symbols())
        stress = lab.stress
        if dp and at.pbc.all():
            e -= dp * (at.get_volume() - len(at) * v_ref)
            if stress is not None:
                stress = np.asarray(stress, float) - dp * np.array([1, 1, 1, 0, 0, 0], float)
        out.append(replace(lab, energy=e, stress=stress))
    return out


def is_null(shift: dict) -> bool:
    """True when a stored correction moves no label (pressure gate closed, no energy shift)."""
    return not shift.get("pressure_eV_per_A3") and not any(shift.get("shift_eV_per_atom", {}).values())


def _element_counts(structures: list, elements: list[str]) -> np.ndarray:
    """Atoms of each element per structure, shape (len(structures), len(elements))."""
    return np.array([[at.get_chemical_symbols().count(el) for el in elements] for at in structures],
                    float).reshape(len(structures), len(elements))


def _has_stress(lab: Label) -> bool:
    return lab.stress is not None and np.all(np.isfinite(lab.stress))


def pressure(stress) -> float:
    """Pressure (eV/A^3) of a Voigt stress; nan without one."""
    return float("nan") if stress is None else -float(np.sum(np.asarray(stress, float)[:3])) / 3.0


def teacher_labels(ctx) -> LabelledSet:
    """The surrogate set with the teacher's labels, moved by step 5's stored correction when
    ``mace.shift_teacher_to_dft`` or ``mace.teacher_pressure_shift`` is on (what steps 6 and
    7 fit)."""
    ls = ctx.camp.labelled_set("surrogate", "mace")
    mace = ctx.cfg.mace
    on = mace.shift_teacher_to_dft or mace.teacher_pressure_shift
    shift = ctx.camp.read_json("metrics/teacher_energy_shift") if on else None
    if not shift:
        return ls
    return LabelledSet(ls.structures, apply_correction(ls.structures, ls.labels, shift))
