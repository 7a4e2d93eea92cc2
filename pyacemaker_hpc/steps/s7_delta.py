"""Step 7: delta learning pulls the base ACE onto the DFT labels of step 2
(``pacemaker.delta_mode``: weighted_refit with ``weight_dft``, or a residual correction).
With ``step7_pacemaker_finetune.enable: false`` the base ACE is the final potential."""
from __future__ import annotations

import logging
from dataclasses import replace

from .context import Step
from .s6_base_ace import energy_reference
from .tasks import delta_task

log = logging.getLogger("pyacemaker_hpc")


class DeltaLearning(Step):
    name = "step7_delta_learning"

    def inputs(self, ctx):
        cfg = ctx.cfg
        return {"step7": cfg.section_dict("distillation.step7_pacemaker_finetune"),
                "mode": cfg.pacemaker.delta_mode, "iters": cfg.pacemaker.delta_max_iterations,
                "weight_dft_forces": cfg.pacemaker.weight_dft_forces,
                "correction_functions": cfg.pacemaker.correction_functions,
                "upstream": [ctx.output_hash("step6_base_ace"), ctx.output_hash("step2_active_learning")]}

    def run(self, ctx):
        cfg, camp = ctx.cfg, ctx.camp
        base = camp.load_model("ace_base")
        if not cfg.distillation.step7_pacemaker_finetune.enable:
            final = replace(base, name="ace_final", metrics={**base.metrics, "delta": "disabled"})
        else:
            final = ctx.farm.run_one("train", delta_task, cfg, energy_reference(ctx), base,
                                     camp.labelled_set("surrogate", "mace"), camp.labelled_set("dft", "dft"),
                                     str(ctx.workdir / "pacemaker" / "ace_final"))
            final = replace(final, name="ace_final")
        camp.store_model(final)
        log.info("[step7] final ACE (%s): %s", cfg.pacemaker.delta_mode, final.metrics)
        return final.sha256(".yaml")
