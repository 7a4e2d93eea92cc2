"""Step 3: fine-tune the foundation MACE on the DFT labels of step 2 (``mace_run_train``
on the train rank, its own process). ``mace.committee_size`` members differ in seed; the
first one drives step 4's MD, all of them filter MD frames by disagreement, and the first
(``mace.teacher: first``) or their mean (``mean``: one member per foundation model) labels
step 5's surrogate set.

``mace.finetune.method: multihead`` trains a replay head beside the new one on the
foundation's own labels of ``replay_size`` pool structures (offline replay: no foundation
training data needed), labelled here by the MACE group and kept in the campaign
(``/structures/replay``, ``/labels/replay/foundation``)."""
from __future__ import annotations

import logging

import numpy as np

from ..core.models import LabelledSet
from ..parallel import TaskFailed
from .context import Step, StepContext, digest
from .tasks import finetune_selection_task, finetune_task, mace_label_task

log = logging.getLogger("pyacemaker_hpc")


def member_foundations(cfg) -> list[str]:
    """The foundation model each fine-tuned member starts from: ``base_model`` for every
    member, or with ``mace.teacher: mean`` base_model and the ``committee`` models in turn
    (at least one member each)."""
    base = cfg.distillation.step3_mace_finetune.base_model
    if cfg.mace.teacher != "mean":
        return [base] * cfg.mace.committee_size
    models = [base, *cfg.mace.committee]
    return [models[k % len(models)] for k in range(max(cfg.mace.committee_size, len(models)))]


def finetuned_names(ctx: StepContext) -> list[str]:
    return [f"mace_ft_{k}" for k in range(len(member_foundations(ctx.cfg)))]


def teacher_paths(ctx: StepContext) -> tuple[str, ...]:
    """The model files whose (mean) labels are the teacher's: the first member, or all."""
    names = finetuned_names(ctx) if ctx.cfg.mace.teacher == "mean" else finetuned_names(ctx)[:1]
    return tuple(ctx.model_path(n, ".model") for n in names)


def replay_pick(cfg, n_pool: int) -> np.ndarray:
    """Indices of the pool cells that make the multihead replay set (seeded, sorted)."""
    n = min(cfg.mace.finetune.replay_size, n_pool)
    return np.sort(np.random.default_rng(cfg.seed + 3).choice(n_pool, size=n, replace=False))


def replay_set(ctx: StepContext, base: str, store: bool = True) -> LabelledSet | None:
    """multihead only (configured or a validated candidate): the foundation's labels on a
    seeded sample of the step-1 pool (``store``: kept in the campaign; the other foundations
    of ``mace.teacher: mean`` label the same cells anew)."""
    from ..oracle.mace_surrogate import pick_device

    cfg, camp = ctx.cfg, ctx.camp
    if not cfg.mace.finetune.uses_multihead():
        return None
    if store and ctx.resuming and camp.has_labels("replay", "foundation"):
        return camp.labelled_set("replay", "foundation")
    pool = camp.read_structures("pool")
    structures = [pool[i] for i in replay_pick(cfg, len(pool))]
    out = {}

    def on_result(k, res):
        if isinstance(res, TaskFailed):
            raise RuntimeError(f"foundation labelling of the replay set failed:\n{res.error}")
        out[k] = res

    ctx.farm.map("mace", [(0, mace_label_task, ((base,), pick_device(cfg.mace.device), cfg.mace.default_dtype,
                                                cfg.mace.batch_size, structures))],
                 on_result, label="replay labels")
    if not store:
        return LabelledSet(structures, out[0])
    camp.write_structures("replay", structures)
    camp.init_labels("replay", "foundation", keep_existing=False)
    camp.put_labels("replay", "foundation", dict(enumerate(out[0])))
    log.info("[step3] multihead replay set: foundation labels on %d pool structures", len(structures))
    return camp.labelled_set("replay", "foundation")


def choose_loss(ctx: StepContext, base: str, train, replay=None) -> dict:
    """The fine-tuning loss overrides chosen by K-fold validation on the DFT labels
    (``mace.finetune.select_by_validation``), recorded in /metrics/finetune_selection;
    an interrupted step keeps the choice it made."""
    cfg, camp = ctx.cfg, ctx.camp
    cands = cfg.mace.finetune.select_by_validation
    if not cands:
        return {}
    done = camp.read_json("metrics/finetune_selection") if ctx.resuming else None
    if done and done.get("candidates") == cands:
        return done["chosen"]
    if len(train.usable()) < cfg.mace.finetune.cv_folds:
        log.warning("[step3] %d DFT labels: too few to cross-validate %d folds; using mace.finetune as set",
                    len(train.usable()), cfg.mace.finetune.cv_folds)
        return {}
    chosen, table = ctx.farm.run_one("train", finetune_selection_task, cfg, base, train,
                                     str(ctx.workdir / "finetune" / "selection"), replay)
    camp.write_json("metrics/finetune_selection", {"candidates": cands, "chosen": chosen, "table": table})
    log.info("[step3] fine-tuning loss chosen by %d-fold validation: %s", table[0]["folds"], chosen)
    return chosen


class Finetune(Step):
    name = "step3_finetune"

    def inputs(self, ctx):
        cfg = ctx.cfg
        out = {"step3": cfg.section_dict("distillation.step3_mace_finetune"),
               "finetune": cfg.section_dict("mace.finetune"), "k": cfg.mace.committee_size,
               "dtype": cfg.mace.default_dtype, "upstream": ctx.output_hash("step2_active_learning")}
        if cfg.mace.teacher == "mean":  # absent otherwise: campaigns made before keep their hash
            out["foundations"] = member_foundations(cfg)
        ft = cfg.mace.finetune
        if "naive" in (ft.method, *(c.get("method") for c in ft.select_by_validation)):
            # naive fits before 2026-12-07 trained with the foundation's E0s whatever e0s said
            # (MaceFinetuner._foundation_with_e0s): such a teacher is refitted on resume
            out["e0s_in_foundation_copy"] = True
        return out

    def stale_outputs(self, ctx):
        # every fine-tuned member an earlier config made (it may have had more members)
        old = [f"models/{n}" for n in ctx.camp.model_names() if n.startswith("mace_ft_")]
        return [*old, "metrics/finetune_selection", "labels/replay", "structures/replay"]

    def run(self, ctx):
        from ..oracle.mace_surrogate import resolve_model

        cfg, camp = ctx.cfg, ctx.camp
        train = camp.labelled_set("dft", "dft")
        base = resolve_model(cfg.distillation.step3_mace_finetune.base_model)
        replays = {base: replay_set(ctx, base)}  # each foundation's own replay labels, made once
        overrides = choose_loss(ctx, base, train, replays[base])
        shas = []
        for k, (name, foundation) in enumerate(zip(finetuned_names(ctx), member_foundations(cfg))):
            if ctx.resuming and camp.has_model(name):
                log.info("[step3] %s kept from the interrupted run", name)
            else:
                start = resolve_model(foundation)
                if start not in replays:
                    replays[start] = replay_set(ctx, start, store=False)
                model = ctx.farm.run_one("train", finetune_task, cfg, start, train,
                                         str(ctx.workdir / "finetune" / name), cfg.mace.finetune.seed + k, name,
                                         None, overrides, replays[start])
                camp.store_model(model)
                log.info("[step3] %s: %s", name, model.metrics)
            shas.append(camp.load_model(name).sha256(".model"))
        return digest(shas)
