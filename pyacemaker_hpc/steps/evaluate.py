"""Held-out evaluation: every model of the campaign against DFT labels that no step saw.

The held-out set comes from ``evaluation.holdout_file`` (existing DFT data) or is made from
fresh candidates (a different random stream than step 1) labelled by the same DFT oracle;
those calls are counted apart from the training budget. An ACE fitted on the step-2 DFT
labels alone, with the same basis and budget, is the baseline every claim is measured on.

Two more records, for the report: whether step 2's committee spread ranks the actual error
of its first member on these structures (the reason to trust the uncertainty that chose the
DFT calls: per-structure arrays in ``/metrics/holdout_uncertainty/``, Spearman rho in
``/metrics/evaluation`` under ``uncertainty``), and in the plain loop every iteration's ACE
on the same held-out set (``learning_curve``: error against DFT labels spent).

And how far fine-tuning moved the teacher away from the foundation where no DFT label
reached (``drift_from_foundation``): fine-tuned minus foundation MACE on
:func:`off_distribution_structures`. Part of it is intended (the foundation's systematic
error against the user's DFT), the rest is forgetting; multihead replay exists to keep the
rest small, and this number is how a user sees whether it did.
"""
from __future__ import annotations

import logging

import numpy as np

from ..core.models import Label, LabelledSet, Uncertainty
from ..parallel import TaskFailed
from .context import Step, StepContext, digest
from .labelling import dft_settings_key, label_set_with_dft
from .s1_sampling import seed_structures
from .s3_finetune import teacher_paths
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


def per_structure_errors(reference: LabelledSet, predicted: list[Label]) -> dict[str, np.ndarray]:
    """Per item: the largest per-atom force error |F_pred - F_dft| (eV/A; the committee's
    force spread is a max over atoms too), the RMS force-component error (eV/A) and the
    |energy error| per atom (eV/atom, mean offset removed: a constant shift is no error the
    spread could see). NaN where either side failed, so arrays stay aligned with the set."""
    n = len(reference)
    out = {k: np.full(n, np.nan) for k in ("max_force_error", "rms_force_error", "abs_energy_error")}
    de = np.full(n, np.nan)
    for i, (at, ref, pred) in enumerate(zip(reference.structures, reference.labels, predicted)):
        if not (ref.ok and pred.ok):
            continue
        d = np.asarray(pred.forces) - np.asarray(ref.forces)
        out["max_force_error"][i] = float(np.linalg.norm(d, axis=1).max()) if len(d) else 0.0
        out["rms_force_error"][i] = float(np.sqrt(np.mean(d ** 2))) if len(d) else 0.0
        de[i] = (pred.energy - ref.energy) / len(at)
    if np.isfinite(de).any():
        out["abs_energy_error"] = np.abs(de - np.nanmean(de))
    return out


def spearman(x, y) -> float | None:
    """Spearman rank correlation over the finite pairs; None when it is undefined (fewer
    than 3 pairs, or a constant side such as a one-member committee's zero spread)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return None
    return float(spearmanr(x[ok], y[ok]).statistic)


def uncertainty_summary(unc: Uncertainty, err: dict[str, np.ndarray], n_members: int) -> dict:
    """Rank correlations between the committee spread and the first member's errors."""
    return {"committee_size": n_members, "member": "foundation MACE",
            "n": int(np.sum(np.isfinite(err["max_force_error"]))),
            "spearman_force_std_vs_max_force_error": spearman(unc.force_std, err["max_force_error"]),
            "spearman_force_std_vs_rms_force_error": spearman(unc.force_std, err["rms_force_error"]),
            "spearman_energy_std_vs_abs_energy_error": spearman(unc.energy_std, err["abs_energy_error"])}


def uncertainty_vs_error(ctx: StepContext, ho: LabelledSet, first_member: list[Label]) -> dict:
    """Step 2's committee (same models, same farm path on the ``mace`` role) on the held-out
    structures, against the error of its first member's predictions ``first_member``. The
    arrays go to ``/metrics/holdout_uncertainty/``; returns the summary."""
    from .s2_active_learning import committee_models, committee_uncertainty

    models = committee_models(ctx)
    unc = committee_uncertainty(ctx, models, ho.structures)
    err = per_structure_errors(ho, first_member)
    store_uncertainty(ctx.camp, unc, err)
    return uncertainty_summary(unc, err, len(models))


def off_distribution_structures(cfg, seed: int) -> list:
    """Cells the campaign's sampling never makes: every seed structure as a 2x2x2 supercell
    compressed/expanded by 8 and 12 % in volume beyond the generator's strains, strongly
    rattled (0.25 A), and with a vacancy."""
    rng = np.random.default_rng(seed)
    out = []
    for proto in seed_structures(cfg):
        big = proto.repeat((2, 2, 2))
        for vol in (0.88, 0.92, 1.08, 1.12):
            a = big.copy()
            a.set_cell(a.cell * vol ** (1 / 3), scale_atoms=True)
            out.append(a)
        a = big.copy()
        a.positions += rng.normal(0.0, 0.25, a.positions.shape)
        out.append(a)
        a = big.copy()
        del a[int(rng.integers(len(a)))]
        out.append(a)
    return out


def drift_from_foundation(ctx: StepContext, foundation: str, finetuned: str | tuple) -> dict:
    """Fine-tuned minus foundation MACE on off-distribution cells: energy (raw and offset
    removed, meV/atom) and force (meV/A) RMS differences, with the fine-tuning method the
    teacher was trained by (``select_by_validation`` may have chosen it)."""
    cells = off_distribution_structures(ctx.cfg, ctx.cfg.seed + 104729)
    ref = LabelledSet(cells, mace_predictions(ctx, foundation, cells))
    flag = ctx.camp.load_model("mace_ft_0").metrics.get("multihead")
    method = ctx.cfg.mace.finetune.method if flag is None else ("multihead" if flag else "naive")
    return {**errors(ref, mace_predictions(ctx, finetuned, cells)), "method": method}


def store_uncertainty(camp, unc: Uncertainty, err: dict[str, np.ndarray]) -> None:
    """The per-structure spread and errors under ``/metrics/holdout_uncertainty/`` (what
    the report plots), in one commit."""
    with camp.transaction():
        for key, arr in {"force_std": unc.force_std, "energy_std": unc.energy_std, **err}.items():
            camp.write_array(f"metrics/holdout_uncertainty/{key}", arr)


def extrapolation_summary(gamma: np.ndarray, err: dict[str, np.ndarray], threshold: float) -> dict:
    """How the final ACE's extrapolation grade on the held-out cells tracks its errors: the
    cells above ``threshold`` (what a user's MD with the .asi would flag) and the force RMSE
    inside and beyond it, so a held-out mean carried by one extrapolated cell shows as such."""
    ok = np.isfinite(gamma) & np.isfinite(err["rms_force_error"])
    beyond = ok & (gamma > threshold)

    def rmse(mask) -> float | None:
        return 1000 * float(np.sqrt(np.mean(err["rms_force_error"][mask] ** 2))) if mask.any() else None

    return {"threshold": float(threshold), "n": int(ok.sum()), "n_beyond": int(beyond.sum()),
            "max_gamma": float(np.max(gamma[ok])) if ok.any() else None,
            "force_rmse_within_meV_A": rmse(ok & ~beyond), "force_rmse_beyond_meV_A": rmse(beyond),
            "spearman_gamma_vs_max_force_error": spearman(gamma, err["max_force_error"])}


def extrapolation_on_holdout(ctx: StepContext, ho: LabelledSet, pred: list[Label]) -> dict | None:
    """The final ACE's max extrapolation grade per held-out cell (its exported .asi) and the
    errors beside it, into ``/metrics/holdout_extrapolation/``; None without an active set
    (pacemaker builds none for a basis larger than its training environments)."""
    from ..trainer.active_set import extrapolation_grades

    try:
        gamma = extrapolation_grades(ctx.camp.load_model("ace_final"), ho.structures,
                                     str(ctx.workdir / "eval" / "gamma"))
    except ValueError as exc:
        log.warning("[evaluate] no extrapolation grades on the held-out set: %s", exc)
        return None
    err = per_structure_errors(ho, pred)
    with ctx.camp.transaction():
        for key, arr in {"gamma": gamma, **err}.items():
            ctx.camp.write_array(f"metrics/holdout_extrapolation/{key}", arr)
    return extrapolation_summary(gamma, err, ctx.cfg.evaluation.gamma_threshold)


def plain_loop_curve(ctx: StepContext, ho: LabelledSet) -> list[dict]:
    """Held-out errors of every plain-loop iteration's ACE (``ace_iter<k>``) against the
    DFT labels it was fitted on: the loop's learning curve on data no iteration saw."""
    history = ctx.camp.read_json("metrics/plain_dft_loop") or []
    curve = []
    for rec in history:
        name = f"ace_iter{rec['iteration']}"
        if ctx.camp.has_model(name):
            curve.append({"model": name, "n_dft_calls": rec["n_dft_calls"], "n_dft_labels": rec["n_train"],
                          **errors(ho, ace_predictions(ctx, name, ho.structures))})
    return curve


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


def mace_predictions(ctx: StepContext, model: str | tuple, structures: list) -> list[Label]:
    """One MACE model's labels, or the mean of several (the teacher of ``mace.teacher: mean``)."""
    from ..oracle.mace_surrogate import pick_device

    cfg = ctx.cfg
    out = {}

    def on_result(k, res):
        if isinstance(res, TaskFailed):
            raise RuntimeError(f"MACE evaluation failed:\n{res.error}")
        out[k] = res

    models = (model,) if isinstance(model, str) else tuple(model)
    ctx.farm.map("mace", [(0, mace_label_task, (models, pick_device(cfg.mace.device),
                                                 cfg.mace.default_dtype, cfg.mace.batch_size, structures))],
                 on_result, label="MACE evaluation")
    return out[0]


def ace_predictions(ctx: StepContext, name: str, structures: list) -> list[Label]:
    from ..trainer.pacemaker import predict

    return predict(ctx.camp.load_model(name), structures, str(ctx.workdir / "eval" / name))


#: what the DFT-only ACE depends on in ``pacemaker`` (step 7's keys change nothing of it)
DFT_ONLY_FIT_KEYS = ("preset", "number_of_functions_per_element", "cutoff", "max_iterations", "kappa",
                     "evaluator", "reference_energy", "extra_input")


def dft_only_fit_key(cfg, e0: dict, dft_digest: str) -> str:
    """What the DFT-only baseline depends on: the fit settings (basis, budget, reference),
    the elements, E0 and the DFT labels - not step 7's weights."""
    pm = cfg.section_dict("pacemaker")["pacemaker"]
    return digest({"pacemaker": {k: pm.get(k) for k in DFT_ONLY_FIT_KEYS}, "elements": cfg.system.elements,
                   "e0": e0, "dft": dft_digest})


def dft_only_ace(ctx: StepContext, dft: LabelledSet, e0: dict) -> None:
    """Fit the DFT-only baseline into ``/models/ace_dft_only`` unless the stored one has the
    same inputs: tuning step 7 re-runs the evaluation, and refitting an unchanged baseline
    there cost a full pacemaker fit every time."""
    from .s2_active_learning import labels_digest

    key = dft_only_fit_key(ctx.cfg, e0, labels_digest(dft))
    if "ace_dft_only" in ctx.camp.model_names() and \
            ctx.camp.load_model("ace_dft_only").metrics.get("inputs_sha256") == key:
        log.info("[evaluate] ACE on DFT labels only: inputs unchanged, the stored fit is reused")
        return
    model = ctx.farm.run_one("train", ace_fit_task, ctx.cfg, e0, dft,
                             str(ctx.workdir / "pacemaker" / "ace_dft_only"), "ace_dft_only")
    model.metrics["inputs_sha256"] = key
    ctx.camp.store_model(model)


class Evaluate(Step):
    name = "evaluate"

    def inputs(self, ctx):
        cfg = ctx.cfg
        models = [n for n in ctx.camp.model_names() if n != "ace_dft_only"]
        out = {"evaluation": cfg.section_dict("evaluation"), "dft": dft_settings_key(ctx),
               "models": sorted(models), "pacemaker": cfg.section_dict("pacemaker"),
               "upstream": [ctx.output_hash(s) for s in ("step2_active_learning", "step3_finetune",
                                                         "step6_base_ace", "step7_delta_learning",
                                                         "plain_dft_loop")]}
        if cfg.distillation.enable_mace_distillation:  # the uncertainty-vs-error record uses it
            out["committee"] = [cfg.distillation.step3_mace_finetune.base_model, *cfg.mace.committee]
            if cfg.mace.teacher != "first":  # the fine-tuned MACE row is the members' mean
                out["teacher"] = cfg.mace.teacher
        return out

    def run(self, ctx):
        from .s6_base_ace import energy_reference

        cfg, camp = ctx.cfg, ctx.camp
        ho = holdout_set(ctx)
        if len(ho) == 0:
            log.warning("[evaluate] no held-out DFT data (evaluation.holdout_file / n_holdout): skipped")
            camp.write_json("metrics/evaluation", {})
            return digest("empty")
        results = {}
        dft = camp.labelled_set("dft", "dft")
        summary = {"n_holdout": len(ho.usable()), "n_dft_training": len(dft), "models": results}

        def record(key: str, name: str, pred: list[Label], n_dft: int | None = None) -> None:
            """Keep the predictions (for parity plots), the errors and the number of DFT
            labels behind the model (the x of the report's learning curve)."""
            camp.init_labels("holdout", key, keep_existing=False)
            camp.put_labels("holdout", key, dict(enumerate(pred)))
            results[name] = {**errors(ho, pred), "n_dft_labels": len(dft) if n_dft is None else n_dft}

        if cfg.distillation.enable_mace_distillation:
            from ..oracle.mace_surrogate import resolve_model

            base = resolve_model(cfg.distillation.step3_mace_finetune.base_model)
            foundation = mace_predictions(ctx, base, ho.structures)
            record("foundation", "foundation MACE", foundation, n_dft=0)
            summary["uncertainty"] = uncertainty_vs_error(ctx, ho, foundation)
            teacher = teacher_paths(ctx)
            record("mace_ft_0", "fine-tuned MACE", mace_predictions(ctx, teacher, ho.structures))
            summary["drift_from_foundation"] = drift_from_foundation(ctx, base, teacher)
            record("ace_base", "base ACE (step 6)", ace_predictions(ctx, "ace_base", ho.structures))
        else:
            summary["learning_curve"] = plain_loop_curve(ctx, ho)
        final = ace_predictions(ctx, "ace_final", ho.structures)
        record("ace_final", "final ACE", final)
        summary["extrapolation"] = extrapolation_on_holdout(ctx, ho, final)
        if cfg.evaluation.compare_dft_only and cfg.distillation.enable_mace_distillation:
            dft_only_ace(ctx, dft, energy_reference(ctx))
            record("ace_dft_only", "ACE on DFT labels only", ace_predictions(ctx, "ace_dft_only", ho.structures))
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
    drift = summary.get("drift_from_foundation") or {}
    if drift.get("n"):
        lines.append(f"fine-tuned ({drift['method']}) minus foundation MACE on {drift['n']} off-distribution "
                     f"cells: E {drift['energy_rmse_shifted_meV_atom']:.1f} meV/atom (offset removed), "
                     f"F {drift['force_rmse_meV_A']:.1f} meV/A")
    from ..report import extrapolation_line

    line = extrapolation_line(summary.get("extrapolation"))
    if line:
        lines.append(line)
    rho = (summary.get("uncertainty") or {}).get("spearman_force_std_vs_max_force_error")
    if rho is not None:
        lines.append(f"committee force spread vs foundation's largest force error: Spearman rho {rho:.2f} "
                     f"(n={summary['uncertainty']['n']})")
    print("\n".join(lines), flush=True)
