"""Step 4: a large, diverse surrogate set. MD with the fine-tuned MACE at several
temperatures and strains, started from the step-1 selection and the DFT structures
(MD from ideal bulk alone misses the region that matters), replicas farmed over the MACE
group; non-physical or untrusted frames are discarded; the pool's own structures join
(``mace.md.include_pool``); the same diversity selection as step 1 keeps ``target_points``."""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from ..parallel import TaskFailed
from .context import Step, digest
from .s1_sampling import compute_descriptors, descriptor_model, select
from .s3_finetune import finetuned_names
from .tasks import md_task

log = logging.getLogger("pyacemaker_hpc")


class SurrogateSampling(Step):
    name = "step4_surrogate_sampling"

    def inputs(self, ctx):
        cfg = ctx.cfg
        return {"step4": cfg.section_dict("distillation.step4_surrogate_sampling"),
                "md": cfg.section_dict("mace.md"), "seed": cfg.seed, "dtype": cfg.mace.inference_dtype,
                "descriptors": cfg.section_dict("descriptors"),
                "objective": cfg.distillation.step1_direct_sampling.objective,
                "upstream": [ctx.output_hash("step1_sampling"), ctx.output_hash("step3_finetune")]}

    def run(self, ctx):
        from ..oracle.mace_surrogate import pick_device

        cfg, camp = ctx.cfg, ctx.camp
        md = cfg.mace.md
        starts = camp.read_structures("selected") + camp.read_structures("dft")
        names = finetuned_names(ctx)
        teacher = ctx.model_path(names[0], ".model")
        committee = tuple(ctx.model_path(n, ".model") for n in names) if len(names) > 1 else None
        rng = np.random.default_rng(cfg.seed + 4)
        tasks, k = [], 0
        for T in md.temperatures:
            for eps in md.strains:
                for _ in range(md.replicas_per_temperature):
                    start = starts[int(rng.integers(len(starts)))]
                    tasks.append((k, md_task, (teacher, start, T, eps, md, cfg.seed * 1000 + k,
                                               pick_device(cfg.mace.device), cfg.mace.inference_dtype, committee)))
                    k += 1
        frames, discarded = [], Counter()
        results = {}

        def on_result(key, res):
            if isinstance(res, TaskFailed):
                raise RuntimeError(f"surrogate MD failed:\n{res.error}")
            results[key] = res

        ctx.farm.map("mace", tasks, on_result, label="surrogate MD")
        for key in sorted(results):
            kept, dropped = results[key]
            frames += kept
            discarded.update(dropped)
        if md.include_pool:
            frames += camp.read_structures("pool")
        log.info("[step4] %d candidate frames (%d MD replicas), discarded %s", len(frames), len(tasks),
                 dict(discarded))
        camp.write_structures("surrogate_candidates", frames)
        X = compute_descriptors(ctx, frames, descriptor_model(ctx))
        n = cfg.distillation.step4_surrogate_sampling.target_points
        idx = select(ctx, X, n, cfg.seed + 4)
        uids = camp.write_structures("surrogate", [frames[i] for i in idx])
        camp.write_json("metrics/step4_surrogate_sampling", {
            "n_replicas": len(tasks), "n_frames": len(frames), "n_selected": len(idx),
            "discarded": dict(discarded)})
        return digest(uids)
