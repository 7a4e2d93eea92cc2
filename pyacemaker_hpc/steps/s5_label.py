"""Step 5: the fine-tuned MACE labels the surrogate set in batches (mace's data loader),
chunks farmed over the MACE group and committed one chunk at a time.

With ``mace.shift_teacher_to_dft`` the teacher also labels the DFT picks, and one energy
shift per element (least squares over the picks' compositions) that puts its energies on
the DFT labels' is stored in ``/metrics/teacher_energy_shift``. The stored labels stay the
teacher's own (a resumed step never shifts twice); :func:`teacher_labels` applies the shift
where steps 6 and 7 read them."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from ..core.models import PENDING, Label, LabelledSet
from ..parallel import TaskFailed
from .context import Step, digest
from .s3_finetune import finetuned_names
from .tasks import mace_label_task

log = logging.getLogger("pyacemaker_hpc")
CHUNK = 100


class SurrogateLabelling(Step):
    name = "step5_surrogate_labelling"

    def inputs(self, ctx):
        out = {"upstream": [ctx.output_hash("step3_finetune"), ctx.output_hash("step4_surrogate_sampling")],
               "dtype": ctx.cfg.mace.inference_dtype}
        if ctx.cfg.mace.shift_teacher_to_dft:  # absent when off: campaigns made before keep their hash
            out["shift_to_dft"] = ctx.output_hash("step2_active_learning")
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
        teacher = (ctx.model_path(finetuned_names(ctx)[0], ".model"),)
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
        if cfg.mace.shift_teacher_to_dft:
            dft = camp.labelled_set("dft", "dft")
            on_dft = ctx.farm.run_one("mace", mace_label_task, *args, dft.structures)
            shift = energy_shift(dft, on_dft, cfg.system.elements)
            camp.write_json("metrics/teacher_energy_shift", shift)
            log.info("[step5] teacher energies shifted onto the DFT picks: %s", shift)
            return digest([energies, shift])
        return digest(energies)


def energy_shift(dft: LabelledSet, teacher: list[Label], elements: list[str]) -> dict:
    """Per-element shifts (eV/atom) minimising sum_i (E_dft - E_teacher - n_i . shift)^2
    over the usable DFT picks (lstsq's minimum-norm answer when the compositions cannot
    separate the elements), with the per-atom RMS difference before and after."""
    pairs = [(at, d.energy, t.energy) for at, d, t in zip(dft.structures, dft.labels, teacher)
             if d.ok and t.ok]
    if not pairs:
        return {"shift_eV_per_atom": {el: 0.0 for el in elements}, "n_dft": 0}
    counts = np.array([[at.get_chemical_symbols().count(el) for el in elements] for at, _, _ in pairs], float)
    diff = np.array([d - t for _, d, t in pairs])
    delta = np.linalg.lstsq(counts, diff, rcond=None)[0]
    n = counts.sum(axis=1)

    def rms(x):
        return float(np.sqrt(np.mean((x / n) ** 2)) * 1000)

    return {"shift_eV_per_atom": {el: float(v) for el, v in zip(elements, delta)}, "n_dft": len(pairs),
            "rms_before_meV_atom": rms(diff), "rms_after_meV_atom": rms(diff - counts @ delta)}


def teacher_labels(ctx) -> LabelledSet:
    """The surrogate set with the teacher's labels, shifted by step 5's per-element energy
    shift when ``mace.shift_teacher_to_dft`` is on (what steps 6 and 7 fit)."""
    ls = ctx.camp.labelled_set("surrogate", "mace")
    shift = ctx.camp.read_json("metrics/teacher_energy_shift") if ctx.cfg.mace.shift_teacher_to_dft else None
    if not shift:
        return ls
    per_el = shift["shift_eV_per_atom"]
    labels = [replace(lab, energy=lab.energy + sum(per_el.get(s, 0.0) for s in at.get_chemical_symbols()))
              for at, lab in zip(ls.structures, ls.labels)]
    return LabelledSet(ls.structures, labels)
