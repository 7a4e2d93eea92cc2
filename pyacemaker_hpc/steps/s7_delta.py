"""Step 7: delta learning pulls the base ACE onto the DFT labels of step 2
(``pacemaker.delta_mode``: weighted_refit with ``weight_dft``, or a residual correction).
With ``step7_pacemaker_finetune.enable: false`` the base ACE is the final potential.
With ``pacemaker.select_weight_dft`` the weight is chosen by K-fold validation on the DFT
labels first (``/metrics/weight_dft_selection``)."""
from __future__ import annotations

import logging
from dataclasses import replace

from .context import Step
from .s5_label import teacher_labels
from .s6_base_ace import energy_reference
from .tasks import delta_task, weight_dft_selection_task

log = logging.getLogger("pyacemaker_hpc")


def choose_weight_dft(ctx, base, sur, dft) -> float | None:
    """The cross-validated weight_dft (None: the config's); an interrupted step keeps it."""
    cfg, camp = ctx.cfg, ctx.camp
    cands = cfg.pacemaker.select_weight_dft
    if not cands or cfg.pacemaker.delta_mode != "weighted_refit":
        return None
    done = camp.read_json("metrics/weight_dft_selection") if ctx.resuming else None
    if done and done.get("candidates") == cands:
        return done["chosen"]
    if len(dft) < cfg.pacemaker.cv_folds:
        log.warning("[step7] %d DFT labels: too few to cross-validate weight_dft; using %s",
                    len(dft), cfg.distillation.step7_pacemaker_finetune.weight_dft)
        return None
    chosen, table = ctx.farm.run_one("train", weight_dft_selection_task, cfg, energy_reference(ctx), base, sur,
                                     dft, str(ctx.workdir / "pacemaker" / "weight_dft_selection"))
    camp.write_json("metrics/weight_dft_selection", {"candidates": cands, "chosen": chosen, "table": table})
    log.info("[step7] weight_dft chosen by %d-fold validation: %s", table[0]["folds"], chosen)
    return chosen


class DeltaLearning(Step):
    name = "step7_delta_learning"

    def inputs(self, ctx):
        cfg = ctx.cfg
        return {"step7": cfg.section_dict("distillation.step7_pacemaker_finetune"),
                "mode": cfg.pacemaker.delta_mode, "iters": cfg.pacemaker.delta_iterations,
                "weight_dft_forces": cfg.pacemaker.weight_dft_forces,
                "correction_functions": cfg.pacemaker.correction_functions,
                "select": [cfg.pacemaker.select_weight_dft, cfg.pacemaker.cv_folds],
                "upstream": [ctx.output_hash("step6_base_ace"), ctx.output_hash("step2_active_learning")]}

    def stale_outputs(self, ctx):
        return ["metrics/weight_dft_selection"]

    def run(self, ctx):
        cfg, camp = ctx.cfg, ctx.camp
        base = camp.load_model("ace_base")
        if not cfg.distillation.step7_pacemaker_finetune.enable:
            final = replace(base, name="ace_final", metrics={**base.metrics, "delta": "disabled"})
        else:
            sur, dft = teacher_labels(ctx), camp.labelled_set("dft", "dft")
            weight = choose_weight_dft(ctx, base, sur, dft)
            final = ctx.farm.run_one("train", delta_task, cfg, energy_reference(ctx), base, sur, dft,
                                     str(ctx.workdir / "pacemaker" / "ace_final"), weight)
            final = replace(final, name="ace_final")
        camp.store_model(final)
        log.info("[step7] final ACE (%s): %s", cfg.pacemaker.delta_mode, final.metrics)
        return final.sha256(".yaml")
