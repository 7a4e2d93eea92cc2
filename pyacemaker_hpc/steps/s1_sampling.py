"""Step 1: candidates from seeds and prototypes, descriptors on the descriptor group,
DIRECT / maximum-entropy selection of ``target_points`` structures."""
from __future__ import annotations

import logging

import numpy as np
from ase.io import read

from ..core.models import structure_uid
from ..parallel import TaskFailed
from .context import Step, StepContext, digest
from .tasks import descriptor_task

log = logging.getLogger("pyacemaker_hpc")
CHUNK = 25


def descriptor_model(ctx: StepContext) -> str | None:
    """The MACE model whose invariant features span the descriptor space (kind: mace)."""
    if ctx.cfg.descriptors.kind != "mace":
        return None
    from ..oracle.mace_surrogate import resolve_model

    return resolve_model(ctx.cfg.distillation.step3_mace_finetune.base_model)


def compute_descriptors(ctx: StepContext, structures: list, model: str | None) -> np.ndarray:
    """Pooled descriptors for ``structures``, chunked over the descriptor group."""
    cfg = ctx.cfg
    from ..oracle.mace_surrogate import pick_device

    args = (cfg.descriptors.kind, tuple(cfg.descriptors.pooling), model, tuple(cfg.system.elements),
            pick_device(cfg.mace.device), cfg.mace.default_dtype)
    # ACE projections cost ~0.2 ms a structure: small chunks would be all farm overhead
    size = CHUNK if cfg.descriptors.kind == "mace" else 10 * CHUNK
    chunks = [structures[i:i + size] for i in range(0, len(structures), size)]
    out: dict[int, np.ndarray] = {}

    def on_result(k, res):
        if isinstance(res, TaskFailed):
            raise RuntimeError(f"descriptor computation failed:\n{res.error}")
        out[k] = res

    ctx.farm.map("descriptor", [(k, descriptor_task, (*args, c)) for k, c in enumerate(chunks)],
                 on_result, label="descriptors")
    return np.concatenate([out[k] for k in range(len(chunks))]) if chunks else np.zeros((0, 0))


def select(ctx: StepContext, X: np.ndarray, n: int, seed: int) -> np.ndarray:
    from ..structure_generator.direct import make_selector

    objective = ctx.cfg.distillation.step1_direct_sampling.objective
    if n >= len(X):
        return np.arange(len(X))
    return np.asarray(make_selector(objective, ctx.cfg.descriptors).select(X, n, seed))


def seed_structures(cfg) -> list:
    from ..structure_generator.mutations import prototype_structures

    seeds = []
    for path in cfg.system.seed_structures:
        for k, at in enumerate(read(path, index=":")):
            at.info["provenance"] = f"seedfile:{path}:{k}"
            seeds.append(at)
    seeds += prototype_structures(cfg.system)
    return seeds


class Sampling(Step):
    name = "step1_sampling"

    def inputs(self, ctx):
        cfg = ctx.cfg
        d = cfg.section_dict("system", "generator", "descriptors", "distillation.step1_direct_sampling")
        d["seed"] = cfg.seed
        if cfg.descriptors.kind == "mace":
            d["descriptor_model"] = cfg.distillation.step3_mace_finetune.base_model
        return d

    def run(self, ctx):
        from ..structure_generator.mutations import MutationGenerator

        cfg, camp = ctx.cfg, ctx.camp
        seeds = seed_structures(cfg)
        gen = MutationGenerator(cfg.generator, cfg.system.elements)
        pool = gen.generate(seeds, np.random.default_rng(cfg.seed))
        seen = {a.info.get("uid") for a in pool}
        for k, s in enumerate(seeds):  # the ideal cells themselves are candidates too
            s = s.copy()
            s.info.update(uid=structure_uid(s), provenance=s.info.get("provenance") or f"seed{k}")
            if s.info["uid"] not in seen:
                pool.append(s)
        log.info("[step1] %d candidates from %d seeds (%d rejected as overlapping)", len(pool),
                 len(seeds), gen.n_rejected)
        camp.write_structures("pool", pool)
        X = compute_descriptors(ctx, pool, descriptor_model(ctx))
        camp.write_array("descriptors/pool", X, kind=cfg.descriptors.kind)
        n = cfg.distillation.step1_direct_sampling.target_points
        idx = select(ctx, X, n, cfg.seed)
        uids = camp.write_structures("selected", [pool[i] for i in idx])
        camp.write_array("descriptors/selected_index", idx)
        camp.write_json("metrics/step1_sampling", {"n_candidates": len(pool), "n_rejected": gen.n_rejected,
                                                   "n_selected": len(idx), "descriptor_dim": int(X.shape[1])})
        return digest(uids)
