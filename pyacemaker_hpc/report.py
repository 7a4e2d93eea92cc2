"""Campaign status and a self-contained HTML report (step timings, DFT jobs, parity plots
of every evaluated model against held-out DFT, the plain loop's learning curve)."""
from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path

import numpy as np

from .campaign import Campaign

#: pipeline order of the step names (both modes) for display
STEP_ORDER = ("step1_sampling", "step2_active_learning", "plain_dft_loop", "step3_finetune",
              "step4_surrogate_sampling", "step5_surrogate_labelling", "step6_base_ace",
              "step7_delta_learning", "evaluate")


def status_text(camp: Campaign) -> str:
    lines = [f"campaign {camp.path}"]
    order = {n: i for i, n in enumerate(STEP_ORDER)}
    steps = sorted(camp.steps().items(), key=lambda kv: order.get(kv[0], len(order)))
    for name, info in steps:
        secs = info.get("seconds")
        t = f"{float(secs):8.1f} s" if secs not in (None, "") else " " * 10
        err = f"  {info.get('error')}" if info.get("error") else ""
        lines.append(f"  {name:<28} {info.get('status', 'pending'):<12}{t}{err}")
    for set_name in ("dft", "holdout"):
        if camp.has_labels(set_name, "dft"):
            c = camp.label_counts(set_name, "dft")
            lines.append(f"  DFT {set_name}: {c['done']} done, {c['failed']} failed, {c['pending']} pending")
            reasons = Counter(lab.error.split(":")[0] for lab in camp.read_labels(set_name, "dft")
                              if lab.status == "failed")
            for why, n in reasons.most_common():
                lines.append(f"      failed x{n}: {why}")
    ev = camp.read_json("metrics/evaluation") or {}
    for name, m in ev.get("models", {}).items():
        if m.get("n"):
            lines.append(f"  {name:<26} E {m['energy_rmse_meV_atom']:8.1f} meV/atom  F {m['force_rmse_meV_A']:7.1f} meV/A")
    return "\n".join(lines)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _parity(camp: Campaign, key: str, title: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not camp.has_labels("holdout", key):
        return None
    ref = camp.labelled_set("holdout", "dft", usable_only=False)
    pred = camp.read_labels("holdout", key)
    e_ref, e_pred, f_ref, f_pred = [], [], [], []
    for at, r, p in zip(ref.structures, ref.labels, pred):
        if r.ok and p.ok:
            e_ref.append(r.energy / len(at))
            e_pred.append(p.energy / len(at))
            f_ref.append(np.ravel(r.forces))
            f_pred.append(np.ravel(p.forces))
    if not e_ref:
        return None
    fig, ax = plt.subplots(1, 2, figsize=(8, 3.6))
    for a, x, y, lab in ((ax[0], e_ref, e_pred, "energy (eV/atom)"),
                         (ax[1], np.concatenate(f_ref), np.concatenate(f_pred), "force component (eV/A)")):
        a.scatter(x, y, s=6, alpha=0.6)
        lo, hi = min(np.min(x), np.min(y)), max(np.max(x), np.max(y))
        a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        a.set_xlabel(f"DFT {lab}")
        a.set_ylabel(f"model {lab}")
    fig.suptitle(title)
    out = _png(fig)
    plt.close(fig)
    return out


def _learning_curve(camp: Campaign) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = camp.read_json("metrics/plain_dft_loop")
    if not hist:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ax.plot([h["n_dft_calls"] for h in hist], [h["max_gamma"] for h in hist], "o-")
    ax.set_xlabel("DFT calls")
    ax.set_ylabel("max extrapolation grade")
    ax.set_yscale("log")
    out = _png(fig)
    plt.close(fig)
    return out


def write_report(camp: Campaign, output: str | None = None) -> str:
    out = Path(output or Path(camp.path).with_suffix(".report.html"))
    parts = ["<html><head><meta charset='utf-8'><title>pyacemaker-hpc report</title></head><body>",
             f"<h1>Campaign {html.escape(str(camp.path))}</h1>", "<pre>", html.escape(status_text(camp)), "</pre>"]
    for key, title in (("foundation", "foundation MACE"), ("mace_ft_0", "fine-tuned MACE"),
                       ("ace_base", "base ACE (step 6)"), ("ace_final", "final ACE"),
                       ("ace_dft_only", "ACE on DFT labels only")):
        img = _parity(camp, key, title)
        if img:
            parts.append(f"<h2>{title} vs held-out DFT</h2><img src='data:image/png;base64,{img}'/>")
    lc = _learning_curve(camp)
    if lc:
        parts.append(f"<h2>Plain DFT loop</h2><img src='data:image/png;base64,{lc}'/>")
    parts.append("</body></html>")
    out.write_text("\n".join(parts))
    return str(out)
