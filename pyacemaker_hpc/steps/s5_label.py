"""Step 5: the fine-tuned MACE labels the surrogate set in batches (mace's data loader),
chunks farmed over the MACE group and committed one chunk at a time."""
from __future__ import annotations

import logging

from ..core.models import PENDING
from ..parallel import TaskFailed
from .context import Step, digest
from .s3_finetune import finetuned_names
from .tasks import mace_label_task

log = logging.getLogger("pyacemaker_hpc")
CHUNK = 100


class SurrogateLabelling(Step):
    name = "step5_surrogate_labelling"

    def inputs(self, ctx):
        return {"upstream": [ctx.output_hash("step3_finetune"), ctx.output_hash("step4_surrogate_sampling")],
                "dtype": ctx.cfg.mace.inference_dtype}

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
        return digest([f"{lab.energy:.8f}" for lab in labels])
