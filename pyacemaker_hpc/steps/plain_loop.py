"""The plain DFT active-learning loop (``enable_mace_distillation: false``), through the
same interfaces: DIRECT pool -> DFT -> Pacemaker -> extrapolation grade (pace_activeset,
D-optimality) on the remaining candidates -> DFT on the most extrapolative -> refit, until
no candidate exceeds ``gamma_threshold`` or the DFT budget is spent. Each iteration's DFT
set, model and grades are committed, so a restart continues at the iteration it stopped."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from ..core.models import LabelledSet
from .context import Step, StepContext, digest
from .labelling import dft_settings_key, label_set_with_dft
from .s1_sampling import select
from .s6_base_ace import energy_reference
from .tasks import ace_fit_task

log = logging.getLogger("pyacemaker_hpc")


class PlainDftLoop(Step):
    name = "plain_dft_loop"

    def inputs(self, ctx):
        cfg = ctx.cfg
        return {"al": cfg.section_dict("active_learning"), "pacemaker": cfg.section_dict("pacemaker"),
                "dft": dft_settings_key(ctx), "upstream": ctx.output_hash("step1_sampling"), "seed": cfg.seed}

    def run(self, ctx):
        from ..trainer.active_set import extrapolation_grades

        cfg, camp, al = ctx.cfg, ctx.camp, ctx.cfg.active_learning
        history = camp.read_json("metrics/plain_dft_loop", []) if ctx.resuming else []
        pool = camp.read_structures("pool")
        if not history:
            X = camp.read_array("descriptors/pool")
            first = select(ctx, X, min(al.initial_dft, al.dft_budget, len(pool)), cfg.seed)
            camp.write_structures("al_iter0", [pool[i] for i in first])
        k = len(history)
        while not (history and history[-1]["stop"]):
            ls = label_set_with_dft(ctx, f"al_iter{k}")
            train = LabelledSet([], [])
            for j in range(k + 1):
                train = train + camp.labelled_set(f"al_iter{j}", "dft")
            camp.write_structures("dft", train.structures)
            camp.init_labels("dft", "dft", keep_existing=False)
            camp.put_labels("dft", "dft", dict(enumerate(train.labels)))
            e0 = energy_reference(ctx)
            model = ctx.farm.run_one("train", ace_fit_task, cfg, e0, train,
                                     str(ctx.workdir / "pacemaker" / f"ace_iter{k}"), f"ace_iter{k}")
            camp.store_model(model)
            used = {a.info["uid"] for a in train.structures}
            n_dft = sum(len(camp.read_structures(f"al_iter{j}")) for j in range(k + 1))
            cand = [a for a in pool if a.info["uid"] not in used][: al.n_candidates_per_iteration]
            gamma = extrapolation_grades(model, cand, str(ctx.workdir / "gamma" / f"iter{k}")) if cand else np.zeros(0)
            above = np.where(gamma > al.gamma_threshold)[0]
            room = al.dft_budget - n_dft
            stop = len(above) == 0 or room <= 0 or k + 1 >= al.max_iterations
            record = {"iteration": k, "n_dft_calls": n_dft, "n_train": len(train), "n_new": len(ls),
                      "max_gamma": float(gamma.max()) if len(gamma) else 0.0, "n_above_threshold": int(len(above)),
                      "fit": model.metrics, "stop": bool(stop)}
            with camp.transaction():  # the next iteration's set and this record commit together
                if not stop:
                    order = above[np.argsort(-gamma[above])][: min(al.batch_size, room)]
                    camp.write_structures(f"al_iter{k + 1}", [cand[i] for i in order])
                history.append(record)
                camp.write_json("metrics/plain_dft_loop", history)
            log.info("[plain loop] iteration %d: %d DFT calls, max gamma %.2f, %d above %.1f", k, n_dft,
                     record["max_gamma"], len(above), al.gamma_threshold)
            if not stop:
                k += 1
        final = replace(camp.load_model(f"ace_iter{history[-1]['iteration']}"), name="ace_final")
        camp.store_model(final)
        return digest(history)
