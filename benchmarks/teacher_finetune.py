"""How good a teacher does step 3 make?  Re-fine-tune it with other settings on finished campaigns.

    .venv/bin/python benchmarks/teacher_finetune.py --name cu_rpbe [--tag T] [--n-dft 10 20] \
        [--seeds 1 2 3] --variant default --variant ep150:epochs=150 \
        --variant lr3e3:lr=0.003 --variant mh:method=multihead --variant ens3:members=3 \
        --variant 'cvm:select_by_validation=[{method: naive}, {method: multihead}]'

The final ACE can only be as good as the labels of steps 4-5 where the DFT labels do not
reach, so the teacher's held-out error is the floor the distillation sits on. Fine-tuning
the teacher takes a minute where a full steps 3-7 re-run takes five, so its settings are
screened here first. For every campaign ``distill[-T]_n<N>_s<seed>`` of the study
(``runs/benchmarks/dft_efficiency/STUDY``) and every ``--variant NAME:key=val,...`` this
fine-tunes the campaign's foundation on the campaign's own DFT labels with step 3's own task
(``finetune_task``; ``key`` is a field of ``mace.finetune``, or ``epochs``, or
``members=K``: K fine-tuned seeds whose mean labels the cells; ``foundations=K``: step 3's
``mace.teacher: mean`` over ``base_model`` and the first K-1 ``mace.committee`` models; with ``select_by_validation``
the candidates are cross-validated first, as step 3 does, and the choice is recorded) and scores it on the
campaign's held-out set: E RMSE (meV/atom), E with the mean per-atom offset removed, F
RMSE (meV/A). It works in ``runs/benchmarks/teacher_finetune/STUDY/`` and writes
``runs/benchmarks/teacher_finetune[_STUDY].json`` (mean and per seed).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "runs" / "benchmarks"


def top_level_items(text: str) -> list[str]:
    """``text`` split at the commas outside YAML brackets and braces."""
    items, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return [x for x in (*items, cur) if x.strip()]


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME:key=val,key=val`` (values as YAML, lists and dicts included) -> (NAME, {key: val})."""
    name, _, rest = text.partition(":")
    sets = {}
    for item in top_level_items(rest):
        key, eq, val = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {text!r}: expected key=value, got {item!r}")
        sets[key.strip()] = yaml.safe_load(val)
    return name, sets


def mean_labels(structures, paths: list[str], cfg):
    """The committee mean of energies and forces (one member: its own labels)."""
    from pyacemaker_hpc.core.models import Label
    from pyacemaker_hpc.oracle.mace_surrogate import MaceCommittee, pick_device

    comm = MaceCommittee(paths, device=pick_device(cfg.mace.device), default_dtype=cfg.mace.default_dtype)
    energies, forces, _ = comm.predict_all(structures)
    return [Label(energy=float(np.mean(energies[:, i])),
                  forces=np.mean([forces[k][i] for k in range(len(paths))], axis=0))
            for i in range(len(structures))]


def teacher_error(campaign_dir: Path, sets: dict, workdir: Path) -> dict:
    """Fine-tune the campaign's foundation with ``sets`` applied; its held-out errors."""
    from pyacemaker_hpc.campaign import Campaign
    from pyacemaker_hpc.config import load_config
    from pyacemaker_hpc.oracle.mace_surrogate import resolve_model
    from pyacemaker_hpc.steps.evaluate import errors
    from pyacemaker_hpc.steps.s3_finetune import member_foundations, replay_pick
    from pyacemaker_hpc.steps.tasks import finetune_selection_task, finetune_task
    from pyacemaker_hpc.trainer.mace_finetune import foundation_replay_set

    cfg = load_config(campaign_dir / "config.yaml")
    sets = dict(sets)
    cfg.mace.committee_size = int(sets.pop("members", 1))
    foundations = int(sets.pop("foundations", 1))
    if foundations > 1:  # step 3's mace.teacher: mean over the first K foundations
        if foundations > 1 + len(cfg.mace.committee):
            raise SystemExit(f"foundations={foundations}: the config names {1 + len(cfg.mace.committee)}")
        cfg.mace.teacher, cfg.mace.committee = "mean", cfg.mace.committee[:foundations - 1]
    if "epochs" in sets:
        cfg.distillation.step3_mace_finetune.epochs = int(sets.pop("epochs"))
    cfg.mace.finetune = cfg.mace.finetune.model_copy(update=sets)
    with Campaign(campaign_dir / "campaign.h5", readonly=True) as camp:
        dft, holdout = camp.labelled_set("dft", "dft"), camp.labelled_set("holdout", "dft")
        pool = camp.read_structures("pool")
    starts = [resolve_model(m) for m in member_foundations(cfg)]
    replays = {m: None for m in starts}
    if cfg.mace.finetune.uses_multihead():  # step 3's replay: each foundation's labels on pool cells
        cells = [pool[i] for i in replay_pick(cfg, len(pool))]
        replays = {m: foundation_replay_set(m, cells, default_dtype=cfg.mace.default_dtype) for m in replays}
    base = starts[0]
    chosen, cv = {}, []
    if cfg.mace.finetune.select_by_validation:  # step 3's own choice, as choose_loss makes it
        chosen, cv = finetune_selection_task(cfg, base, dft, str(workdir / "selection"), replays[base])
    paths = []
    for k, start in enumerate(starts):
        name = f"mace_ft_{k}"
        model = finetune_task(cfg, start, dft, str(workdir / name), cfg.mace.finetune.seed + k,
                              name, None, chosen, replays[start])
        paths.append(str(model.write(workdir / "models", stem=name)[".model"]))
    err = errors(holdout, mean_labels(holdout.structures, paths, cfg))
    out = {"E": err["energy_rmse_meV_atom"], "E_shifted": err["energy_rmse_shifted_meV_atom"],
           "F": err["force_rmse_meV_A"]}
    if cv:
        out.update(chosen=chosen, cv=[{k: r[k] for k in ("overrides", "cv_energy_meV_atom", "cv_forces_meV_A")}
                                      for r in cv])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="", help="study (runs/benchmarks/dft_efficiency/STUDY)")
    ap.add_argument("--tag", default="", help="distill variant whose campaigns to read")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:key=val,... (mace.finetune fields, epochs, members); repeatable")
    ap.add_argument("--n-dft", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args(argv)

    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    runs = BENCH / "dft_efficiency" / args.name if args.name else BENCH / "dft_efficiency"
    head = f"distill-{args.tag}" if args.tag else "distill"
    out = BENCH / f"teacher_finetune{'_' + args.name if args.name else ''}.json"
    table = json.loads(out.read_text()) if out.is_file() else {}
    for vname, sets in variants:
        for n in args.n_dft:
            key = f"{vname} N={n}"
            per_seed = table.get(key, {}).get("per_seed", {})
            for seed in args.seeds:
                d = runs / f"{head}_n{n}_s{seed}"
                if str(seed) in per_seed:
                    continue
                if not (d / "campaign.h5").is_file():
                    print(f"{d.name}: no campaign, skipped")
                    continue
                per_seed[str(seed)] = teacher_error(d, sets, BENCH / "teacher_finetune" / args.name / vname / d.name)
                r = per_seed[str(seed)]
                print(f"{vname:<12} N={n:<3} seed {seed}: E {r['E']:.1f} [{r['E_shifted']:.1f}] meV/atom  "
                      f"F {r['F']:.1f} meV/A" + (f"  chosen {r['chosen']}" if "chosen" in r else ""), flush=True)
                for c in r.get("cv", []):
                    print(f"    CV {c['overrides']}: E {c['cv_energy_meV_atom']:.1f} meV/atom  "
                          f"F {c['cv_forces_meV_A']:.1f} meV/A", flush=True)
            if per_seed:
                m = {q: float(np.mean([r[q] for r in per_seed.values()])) for q in ("E", "E_shifted", "F")}
                table = json.loads(out.read_text()) if out.is_file() else {}  # another stream may have written
                table[key] = {"variant": vname, "sets": sets, "N": n, **m, "per_seed": per_seed}
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(table, indent=1))
    print(f"\n{'variant':<12} {'N':>4} {'seeds':>5} {'E RMSE':>8} {'E shift':>8} {'F RMSE':>8}"
          "   (teacher on the held-out set, mean over seeds)")
    for r in table.values():
        print(f"{r['variant']:<12} {r['N']:>4} {len(r['per_seed']):>5} {r['E']:>8.1f} {r['E_shifted']:>8.1f} "
              f"{r['F']:>8.1f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
