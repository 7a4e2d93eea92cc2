"""Held-out evaluation: every model of the campaign against DFT labels that no step saw.

The held-out set comes from ``evaluation.holdout_file`` (existing DFT data) or is made from
fresh candidates (a different random stream than step 1) labelled by the same DFT oracle;
those calls are counted apart from the training budget. An ACE fitted on the step-2 DFT
labels alone, with the same basis and budget, is the baseline every claim is measured on.
"""
from __future__ import annotations

import logging

import numpy as np

from ..core.models import Label, LabelledSet
from ..parallel import TaskFailed
from .context import Step, StepContext, digest
from .labelling import dft_settings_key, label_set_with_dft
from .s1_sampling import seed_structures
from .tasks import ace_fit_task, mace_label_task

log = logging.getLogger("pyacemaker_hpc")


def errors(reference: LabelledSet, predicted: list[Label]) -> dict:
    """Energy RMSE (meV/atom, raw and with the mean per-atom offset removed) and force
    RMSE (meV/A, per component) over the items both sides have."""
    de, df = [], []
    for at, ref, pred in zip(reference.structures, reference.labels, predicted):
        if not (ref.ok and pred.ok):
            continue
        de.append((pred.energy - ref.energy) / len(at))
        df.append((np.asarray(pred.forces) - np.asarray(ref.forces)).ravel())
    if not de:
        return {"n": 0}
    de, df = np.array(de), np.concatenate(df)
    return {"n": len(de), "energy_rmse_meV_atom": 1000 * float(np.sqrt(np.mean(de ** 2))),
            "energy_rmse_shifted_meV_atom": 1000 * float(np.std(de)),
            "force_rmse_meV_A": 1000 * float(np.sqrt(np.mean(df ** 2)))}


def holdout_set(ctx: StepContext) -> LabelledSet:
    cfg, camp = ctx.cfg, ctx.camp
    ev = cfg.evaluation
    if ev.holdout_file:
        from ..oracle.dft import import_labelled

        ls = import_labelled(ev.holdout_file, energy_key=ev.energy_key, forces_key=ev.forces_key).usable()
        camp.write_structures("holdout", ls.structures)
        camp.init_labels("holdout", "dft", keep_existing=False)
        camp.put_labels("holdout", "dft", dict(enumerate(ls.labels)))
        return ls
    if not camp.has_structures("holdout") or not ctx.resuming:
        from ..structure_generator.mutations import MutationGenerator

        gen = MutationGenerator(cfg.generator, cfg.system.elements)
        seen = {a.info["uid"] for a in camp.read_structures("pool")}
        rng = np.random.default_rng(cfg.seed + 7919)
        fresh = [a for a in gen.generate(seed_structures(cfg), rng) if a.info.get("uid") not in seen]
        pick = rng.choice(len(fresh), size=min(ev.n_holdout, len(fresh)), replace=False)
        camp.write_structures("holdout", [fresh[i] for i in sorted(pick)])
    return label_set_with_dft(ctx, "holdout")  # failed items stay (aligned); errors() skips them


def mace_predictions(ctx: StepContext, model: str, structures: list) -> list[Label]:
    from ..oracle.mace_surrogate import pick_device

    cfg = ctx.cfg
    out = {}

    def on_result(k, res):
        if isinstance(res, TaskFailed):
            raise RuntimeError(f"MACE evaluation failed:\n{res.error}")
        out[k] = res

    ctx.farm.map("mace", [(0, mace_label_task, ((model,), pick_device(cfg.mace.device),
                                                 cfg.mace.default_dtype, cfg.mace.batch_size, structures))],
                 on_result, label="MACE evaluation")
    return out[0]


def ace_predictions(ctx: StepContext, name: str, structures: list) -> list[Label]:
    from ..trainer.pacemaker import predict

    return predict(ctx.camp.load_model(name), structures, str(ctx.workdir / "eval" / name))


class Evaluate(Step):
    name = "evaluate"

    def inputs(self, ctx):
        cfg = ctx.cfg
        models = [n for n in ctx.camp.model_names() if n != "ace_dft_only"]
        return {"evaluation": cfg.section_dict("evaluation"), "dft": dft_settings_key(ctx),
                "models": sorted(models), "pacemaker": cfg.section_dict("pacemaker"),
                "upstream": [ctx.output_hash(s) for s in ("step2_active_learning", "step3_finetune",
                                                          "step6_base_ace", "step7_delta_learning",
                                                          "plain_dft_loop")]}

    def run(self, ctx):
        from .s6_base_ace import energy_reference

        cfg, camp = ctx.cfg, ctx.camp
        ho = holdout_set(ctx)
        if len(ho) == 0:
            log.warning("[evaluate] no held-out DFT data (evaluation.holdout_file / n_holdout): skipped")
            camp.write_json("metrics/evaluation", {})
            return digest("empty")
        results = {}

        def record(key: str, name: str, pred: list[Label]) -> None:
            """Keep the predictions (for parity plots) and the errors."""
            camp.init_labels("holdout", key, keep_existing=False)
            camp.put_labels("holdout", key, dict(enumerate(pred)))
            results[name] = errors(ho, pred)

        if cfg.distillation.enable_mace_distillation:
            from ..oracle.mace_surrogate import resolve_model

            base = resolve_model(cfg.distillation.step3_mace_finetune.base_model)
            record("foundation", "foundation MACE", mace_predictions(ctx, base, ho.structures))
            record("mace_ft_0", "fine-tuned MACE",
                   mace_predictions(ctx, ctx.model_path("mace_ft_0", ".model"), ho.structures))
            record("ace_base", "base ACE (step 6)", ace_predictions(ctx, "ace_base", ho.structures))
        record("ace_final", "final ACE", ace_predictions(ctx, "ace_final", ho.structures))
        dft = camp.labelled_set("dft", "dft")
        if cfg.evaluation.compare_dft_only and cfg.distillation.enable_mace_distillation:
            model = ctx.farm.run_one("train", ace_fit_task, cfg, energy_reference(ctx), dft,
                                     str(ctx.workdir / "pacemaker" / "ace_dft_only"), "ace_dft_only")
            camp.store_model(model)
            record("ace_dft_only", "ACE on DFT labels only", ace_predictions(ctx, "ace_dft_only", ho.structures))
        summary = {"n_holdout": len(ho.usable()), "n_dft_training": len(dft), "models": results}
        camp.write_json("metrics/evaluation", summary)
        print_table(summary)
        return digest(summary)


def print_table(summary: dict) -> None:
    lines = [f"Held-out DFT set: {summary['n_holdout']} structures; DFT labels used for training: "
             f"{summary['n_dft_training']}",
             f"{'model':<26} {'E RMSE meV/atom':>16} {'E RMSE (shifted)':>17} {'F RMSE meV/A':>13}"]
    for name, m in summary["models"].items():
        if m.get("n"):
            lines.append(f"{name:<26} {m['energy_rmse_meV_atom']:>16.1f} {m['energy_rmse_shifted_meV_atom']:>17.1f} "
                         f"{m['force_rmse_meV_A']:>13.1f}")
    print("\n".join(lines), flush=True)
