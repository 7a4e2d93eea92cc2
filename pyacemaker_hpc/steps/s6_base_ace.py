"""Step 6: Pacemaker fits the base ACE on the MACE-labelled surrogate set (train rank).

One energy reference (``pacemaker.reference_energy``: per-element E0 from the DFT labels,
or zero) is used for this fit, the delta fit and the DFT-only comparison, so teacher labels
and DFT labels agree on the zero."""
from __future__ import annotations

import logging

from .context import Step, StepContext
from .s5_label import teacher_labels
from .tasks import ace_fit_task

log = logging.getLogger("pyacemaker_hpc")


def energy_reference(ctx: StepContext) -> dict:
    """Per-element E0 (eV) from the DFT labels (``pacemaker.reference_energy: auto``) or zero,
    stored once in /metrics/e0 and recomputed when the DFT labels or the mode change."""
    mode = ctx.cfg.pacemaker.reference_energy
    source = ctx.output_hash("step2_active_learning") + ("" if mode == "auto" else f":{mode}")
    e0 = ctx.camp.read_json("metrics/e0")
    if e0 is None or ctx.camp.read_json("metrics/e0_source") != source:
        from ..trainer.pacemaker import reference_energies

        if mode == "zero":
            e0 = {el: 0.0 for el in ctx.cfg.system.elements}
        else:
            e0 = reference_energies(ctx.camp.labelled_set("dft", "dft"), ctx.cfg.system.elements)
        ctx.camp.write_json("metrics/e0", e0)
        ctx.camp.write_json("metrics/e0_source", source)
    return e0


def base_fit_settings(cfg) -> dict:
    d = cfg.section_dict("pacemaker")["pacemaker"]
    for k in ("delta_mode", "delta_max_iterations", "weight_dft_forces", "correction_functions",
              "select_weight_dft", "cv_folds"):
        d.pop(k, None)
    return d


class BaseAce(Step):
    name = "step6_base_ace"

    def inputs(self, ctx):
        return {"pacemaker": base_fit_settings(ctx.cfg), "elements": ctx.cfg.system.elements,
                "upstream": [ctx.output_hash("step5_surrogate_labelling"),
                             ctx.output_hash("step2_active_learning")]}

    def run(self, ctx):
        camp = ctx.camp
        e0 = energy_reference(ctx)
        train = teacher_labels(ctx)
        model = ctx.farm.run_one("train", ace_fit_task, ctx.cfg, e0, train,
                                 str(ctx.workdir / "pacemaker" / "ace_base"), "ace_base")
        camp.store_model(model)
        log.info("[step6] base ACE on %d surrogate structures: %s", len(train), model.metrics)
        return model.sha256(".yaml")
