"""Campaign status and a self-contained HTML report (step timings, DFT jobs, parity plots
of every evaluated model against held-out DFT, the committee's uncertainty against the
actual error with its Spearman rank correlation, learning curves: error against DFT
labels for the evaluated models, the plain loop's iterations and, when a benchmark's
``learning_curve.json`` lies beside the campaign, its curves)."""
from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
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
    for line in (_spearman_line(ev), extrapolation_line(ev.get("extrapolation"))):
        if line:
            lines.append(f"  {line}")
    return "\n".join(lines)


def extrapolation_line(ext: dict | None) -> str | None:
    """One line on the final ACE's extrapolation grade over the held-out cells."""
    if not ext or not ext.get("n"):
        return None
    within, beyond = ext["force_rmse_within_meV_A"], ext["force_rmse_beyond_meV_A"]
    return (f"final ACE extrapolation grade on the held-out cells: {ext['n_beyond']} of {ext['n']} above "
            f"gamma {ext['threshold']:g} (max {ext['max_gamma']:.2f}); force RMSE "
            + (f"{within:.1f} meV/A within" if within is not None else "none within")
            + (f", {beyond:.1f} meV/A beyond" if beyond is not None else ""))


def _spearman_line(ev: dict) -> str | None:
    """One line with the committee's Spearman rho (None when the evaluation has none)."""
    unc = ev.get("uncertainty")
    if not unc:
        return None
    rho = unc.get("spearman_force_std_vs_max_force_error")
    if rho is None:
        return (f"uncertainty vs error: Spearman rho undefined ({unc.get('committee_size')}-member committee, "
                f"n={unc.get('n')}: a one-member committee has no spread)")
    return (f"uncertainty vs error: Spearman rho {rho:.2f} (step-2 committee force spread vs the "
            f"{unc.get('member', 'first member')}'s largest force error, n={unc.get('n')} held-out structures)")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _parity(camp: Campaign, key: str, title: str) -> str | None:
    plt = _pyplot()
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _learning_curve(camp: Campaign) -> str | None:
    """The plain loop's largest extrapolation grade per iteration (its stop criterion)."""
    plt = _pyplot()
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


def _uncertainty_plot(camp: Campaign, ev: dict) -> str | None:
    """Committee force spread against the first member's largest per-atom force error on
    the held-out structures (recorded by the evaluate step): points along a rising band
    mean the spread that chose the DFT calls ranks where the model is wrong."""
    if not ev.get("uncertainty") or not camp.exists("metrics/holdout_uncertainty/force_std"):
        return None
    u = camp.read_array("metrics/holdout_uncertainty/force_std")
    err = camp.read_array("metrics/holdout_uncertainty/max_force_error")
    ok = np.isfinite(u) & np.isfinite(err) & (u > 0) & (err > 0)
    if not ok.any():
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    ax.scatter(u[ok], err[ok], s=14, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("committee force spread (eV/A)")
    ax.set_ylabel(f"{ev['uncertainty'].get('member', 'first member')}: max |F - F_DFT| (eV/A)")
    rho = ev["uncertainty"].get("spearman_force_std_vs_max_force_error")
    ax.set_title(f"Spearman rho = {rho:.2f}" if rho is not None else "Spearman rho undefined")
    out = _png(fig)
    plt.close(fig)
    return out


#: accepted spellings of a learning-curve row's fields (campaign metrics, benchmark JSON)
_N_KEYS, _F_KEYS, _E_KEYS = (("N", "n_dft_labels", "n_dft_training", "n_dft"),
                             ("F_rmse", "force_rmse_meV_A", "rmse_f_meV_A"),
                             ("E_rmse", "energy_rmse_meV_atom", "rmse_e_meV_atom"))


def _first(row: dict, keys: tuple):
    """The row's value under the first of ``keys`` it has (benchmarks spell fields differently)."""
    return next((row[k] for k in keys if row.get(k) is not None), None)


def benchmark_curves(path: Path) -> dict[str, list[tuple[float, float, float]]]:
    """Curves from a benchmark's learning-curve JSON (a list of rows, or ``{"rows": [...]}``
    as benchmarks/dft_efficiency.py writes): label -> sorted (N, F RMSE, E RMSE), averaged
    over seeds. A row needs an N and a force RMSE; its label is ``method: model``."""
    data = json.loads(Path(path).read_text())
    rows = data.get("rows", []) if isinstance(data, dict) else data
    points: dict[str, dict[float, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        n, f = _first(r, _N_KEYS), _first(r, _F_KEYS)
        if n is None or f is None:
            continue
        label = ": ".join(str(r[k]) for k in ("method", "model") if r.get(k)) or "benchmark"
        e = _first(r, _E_KEYS)
        points[label][float(n)].append((float(f), float("nan") if e is None else float(e)))
    return {lab: [(n, float(np.mean([p[0] for p in v])), float(np.mean([p[1] for p in v])))
                  for n, v in sorted(by_n.items())] for lab, by_n in points.items()}


def campaign_curves(camp: Campaign) -> dict[str, list[tuple[float, float, float]]]:
    """This campaign's points: every evaluated model at the DFT labels behind it, and the
    plain loop's iterations (held-out when the evaluate step recorded them, else the fits'
    training errors, labelled as such)."""
    ev = camp.read_json("metrics/evaluation") or {}
    out: dict[str, list] = {}
    for name, m in ev.get("models", {}).items():
        n = m.get("n_dft_labels", 0 if name.startswith("foundation") else ev.get("n_dft_training"))
        if m.get("n") and n is not None:
            out[name] = [(float(n), m["force_rmse_meV_A"], m["energy_rmse_meV_atom"])]
    if ev.get("learning_curve"):
        out["plain loop, held-out"] = [(float(r["n_dft_labels"]), r["force_rmse_meV_A"], r["energy_rmse_meV_atom"])
                                       for r in ev["learning_curve"] if r.get("n")]
    else:
        hist = camp.read_json("metrics/plain_dft_loop") or []
        train = [(float(h["n_train"]), h["fit"].get("train_rmse_f_meV_A"), h["fit"].get("train_rmse_e_meV_atom"))
                 for h in hist if h.get("fit")]
        if any(p[1] is not None for p in train):
            out["plain loop, training error"] = [p for p in train if p[1] is not None]
    return out


def _rmse_curves_plot(curves: dict[str, list], title: str) -> str | None:
    """Force and energy RMSE against DFT labels: one line (or marker) per curve."""
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.8))
    cmap = plt.cm.tab10 if len(curves) <= 10 else plt.cm.tab20  # distinct colours per curve
    for k, (label, pts) in enumerate(curves.items()):
        n, f, e = (np.array([p[i] for p in pts], dtype=float) for i in range(3))
        style = "o-" if len(pts) > 1 else "s"
        ax[0].plot(n, f, style, label=label, color=cmap(k % cmap.N))
        ax[1].plot(n, e, style, color=cmap(k % cmap.N))
    ax[0].set_ylabel("force RMSE (meV/A)")
    ax[1].set_ylabel("energy RMSE (meV/atom)")
    for a in ax:
        a.set_xlabel("DFT labels used for training")
        a.set_yscale("log")  # a foundation's raw energy error can be 100x the others
    fig.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))  # outside: many curves
    fig.suptitle(title)
    out = _png(fig)
    plt.close(fig)
    return out


def _img(title: str, img: str | None, note: str = "") -> list[str]:
    """An HTML section for a plot (nothing when there is no plot)."""
    if not img:
        return []
    return [f"<h2>{html.escape(title)}</h2>", *([f"<p>{html.escape(note)}</p>"] if note else []),
            f"<img src='data:image/png;base64,{img}'/>"]


def _uncertainty_section(camp: Campaign, ev: dict) -> list[str]:
    """The uncertainty-vs-error plot with its Spearman rho; for a distillation campaign
    evaluated before the record existed, a line saying how to get it."""
    title = "Uncertainty vs error (held-out DFT)"
    line = _spearman_line(ev)
    if line is None:
        if "foundation MACE" not in ev.get("models", {}):
            return []  # the plain loop has no committee
        return [f"<h2>{title}</h2>", "<p>not recorded in this campaign: it was evaluated by an older "
                "version; running the same job again re-runs the evaluate step, which records it</p>"]
    img = _uncertainty_plot(camp, ev)
    return _img(title, img, line) if img else [f"<h2>{title}</h2>", f"<p>{html.escape(line)}</p>"]


def write_report(camp: Campaign, output: str | None = None, learning_curve: str | None = None) -> str:
    """Write the HTML report; returns its path. ``learning_curve``: a benchmark's
    learning-curve JSON to draw as well (default: ``learning_curve.json`` beside the
    campaign file, when there)."""
    out = Path(output or Path(camp.path).with_suffix(".report.html"))
    ev = camp.read_json("metrics/evaluation") or {}
    parts = ["<html><head><meta charset='utf-8'><title>pyacemaker-hpc report</title></head><body>",
             f"<h1>Campaign {html.escape(str(camp.path))}</h1>", "<pre>", html.escape(status_text(camp)), "</pre>"]
    for key, title in (("foundation", "foundation MACE"), ("mace_ft_0", "fine-tuned MACE"),
                       ("ace_base", "base ACE (step 6)"), ("ace_final", "final ACE"),
                       ("ace_dft_only", "ACE on DFT labels only")):
        parts += _img(f"{title} vs held-out DFT", _parity(camp, key, title))
    parts += _uncertainty_section(camp, ev)
    parts += _img("Learning curve: this campaign", _rmse_curves_plot(
        campaign_curves(camp), "held-out DFT errors (training errors where labelled so)"))
    bench = Path(learning_curve) if learning_curve else Path(camp.path).with_name("learning_curve.json")
    if bench.is_file():
        parts += _img(f"Learning curve: {bench.name}", _rmse_curves_plot(benchmark_curves(bench), bench.name),
                      "mean over seeds at each N")
    parts += _img("Plain DFT loop", _learning_curve(camp))
    parts.append("</body></html>")
    out.write_text("\n".join(parts))
    return str(out)
