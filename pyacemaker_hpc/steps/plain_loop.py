"""The plain DFT active-learning loop (``enable_mace_distillation: false``), through the
same interfaces: DIRECT pool -> DFT -> Pacemaker -> extrapolation grade (pace_activeset,
D-optimality) on a random sample of the remaining pool -> DFT on the most extrapolative ->
refit, until no candidate exceeds ``gamma_threshold``, the DFT budget is spent, the pool is
exhausted or ``max_iterations`` models are fitted. Each iteration's record and the next
iteration's DFT set commit together, so a restart continues at the iteration it stopped."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from .context import Step, StepContext, digest
from .labelling import dft_settings_key, existing_data_key, import_existing_dft, label_set_with_dft
from .s1_sampling import select
from .tasks import ace_fit_task

log = logging.getLogger("pyacemaker_hpc")


def loop_e0(ctx: StepContext) -> dict:
    """One energy reference for every fit of the loop: from the iteration-0 DFT labels."""
    from ..trainer.pacemaker import reference_energies

    cfg, camp = ctx.cfg, ctx.camp
    if cfg.pacemaker.reference_energy == "zero":
        e0 = {el: 0.0 for el in cfg.system.elements}
    else:
        e0 = reference_energies(camp.labelled_set("al_iter0", "dft"), cfg.system.elements)
    with camp.transaction():  # e0_source: step 6 of a later distillation run recomputes it
        camp.write_json("metrics/e0", e0)
        camp.write_json("metrics/e0_source", "plain_dft_loop")
    return e0


def forget_earlier_loop(ctx: StepContext) -> None:
    """A fresh start (changed inputs) drops the sets, models and history of an earlier loop."""
    with ctx.camp.transaction() as f:
        for group, prefix in (("structures", "al_iter"), ("labels", "al_iter"), ("models", "ace_iter")):
            for name in [n for n in f[group] if n.startswith(prefix)]:
                del f[group][name]
        if "metrics/plain_dft_loop" in f:
            del f["metrics/plain_dft_loop"]


def distance_to_training(pool: list, X: np.ndarray, cand: list, used: set) -> np.ndarray:
    """Standardised descriptor distance of each candidate to its nearest training structure
    (the pool's own descriptors): the farthest are the least covered."""
    Z = (X - X.mean(0)) / (X.std(0) + 1e-12)
    row = {a.info["uid"]: i for i, a in enumerate(pool)}
    train = Z[[row[u] for u in used if u in row]]
    C = Z[[row[a.info["uid"]] for a in cand]]
    if len(train) == 0:
        return np.ones(len(C))
    return np.min(np.linalg.norm(C[:, None, :] - train[None, :, :], axis=2), axis=1)


class PlainDftLoop(Step):
    name = "plain_dft_loop"

    def inputs(self, ctx):
        cfg = ctx.cfg
        return {"al": cfg.section_dict("active_learning"), "pacemaker": cfg.section_dict("pacemaker"),
                "dft": dft_settings_key(ctx), "existing": existing_data_key(ctx),
                "upstream": ctx.output_hash("step1_sampling"), "seed": cfg.seed}

    def run(self, ctx):
        from ..trainer.active_set import extrapolation_grades

        cfg, camp, al = ctx.cfg, ctx.camp, ctx.cfg.active_learning
        history = camp.read_json("metrics/plain_dft_loop", []) if ctx.resuming else []
        pool = camp.read_structures("pool")
        if not history:
            forget_earlier_loop(ctx)
            first = select(ctx, camp.read_array("descriptors/pool"),
                           min(al.initial_dft, al.dft_budget, len(pool)), cfg.seed)
            camp.write_structures("al_iter0", [pool[i] for i in first])
        k, e0 = len(history), None
        existing = import_existing_dft(ctx)  # the user's own DFT labels train from iteration 0
        while not (history and history[-1]["stop"]):
            label_set_with_dft(ctx, f"al_iter{k}")
            sets = [camp.labelled_set(f"al_iter{j}", "dft", usable_only=False) for j in range(k + 1)]
            n_dft = sum(len(s) for s in sets)  # calls paid for, failed ones included
            train = sum(sets, existing).usable()
            with camp.transaction():  # /structures/dft: every usable DFT label (export, evaluation)
                camp.write_structures("dft", train.structures)
                camp.init_labels("dft", "dft", keep_existing=False)
                camp.put_labels("dft", "dft", dict(enumerate(train.labels)))
            e0 = e0 or loop_e0(ctx)
            model = ctx.farm.run_one("train", ace_fit_task, cfg, e0, train,
                                     str(ctx.workdir / "pacemaker" / f"ace_iter{k}"), f"ace_iter{k}")
            camp.store_model(model)

            used = {a.info["uid"] for s in sets for a in s.structures}
            rest = [a for a in pool if a.info["uid"] not in used]
            pick = np.random.default_rng([cfg.seed, k]).permutation(len(rest))[:al.n_candidates_per_iteration]
            cand = [rest[i] for i in sorted(pick)]
            if ".asi" in model.files or not cand:
                gamma = extrapolation_grades(model, cand, str(ctx.workdir / "gamma" / f"iter{k}")) \
                    if cand else np.zeros(0)
                above, score, how = np.where(gamma > al.gamma_threshold)[0], gamma, "gamma"
            else:  # too few atomic environments for pace_activeset's MaxVol (fewer than functions)
                score = distance_to_training(pool, camp.read_array("descriptors/pool"), cand, used)
                gamma, above, how = np.zeros(0), np.arange(len(cand)), "descriptor distance (no active set)"
                log.warning("[plain loop] iteration %d: no active set (fewer atoms than basis functions): "
                            "next DFT by descriptor distance from the training set instead of gamma", k)
            room = al.dft_budget - n_dft
            reason = ("no candidate above gamma_threshold" if len(above) == 0 else
                      "dft_budget spent" if room <= 0 else
                      "max_iterations reached" if k + 1 >= al.max_iterations else "")
            record = {"iteration": k, "n_dft_calls": n_dft, "n_train": len(train), "n_candidates": len(cand),
                      "max_gamma": float(gamma.max()) if len(gamma) else 0.0,
                      "n_above_threshold": int(len(above)), "selection": how, "fit": model.metrics,
                      "stop": bool(reason), "stop_reason": reason}
            with camp.transaction():  # the next iteration's set and this record commit together
                if not reason:
                    order = above[np.argsort(-score[above], kind="stable")][: min(al.batch_size, room)]
                    camp.write_structures(f"al_iter{k + 1}", [cand[i] for i in order])
                history.append(record)
                camp.write_json("metrics/plain_dft_loop", history)
            log.info("[plain loop] iteration %d: %d DFT calls, max gamma %.2f on %d candidates, %d above %.2f%s",
                     k, n_dft, record["max_gamma"], len(cand), len(above), al.gamma_threshold,
                     f"; stop: {reason}" if reason else "")
            k += 1
        last = history[-1]["iteration"]
        final = camp.load_model(f"ace_iter{last}")
        camp.store_model(replace(final, name="ace_final", metrics={**final.metrics, "al_iteration": last}))
        return digest(history)
