"""Write the results a user takes away out of a campaign: the final ACE (every file of it:
.yaml, .yace, .asi, and in residual mode .correction.yace, .usage.txt, ...), the other ACE
models, the fine-tuned MACE, the datasets as extxyz and pacemaker DataFrames, the metrics,
and an example LAMMPS input."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import yaml
from ase.io import write

from .campaign import Campaign

log = logging.getLogger("pyacemaker_hpc")

LAMMPS_HEAD = """# LAMMPS (ML-PACE package) with the final ACE of this campaign
units           metal
atom_style      atomic
boundary        p p p
read_data       structure.data            # your structure (atom types in the order: {elements})
"""
LAMMPS_PACE = """pair_style      pace
pair_coeff      * * potential.yace {elements}
thermo_style    custom step temp pe press
"""
# pace/extrapolation reads the B-basis .yaml (not the .yace), which carries no E0
LAMMPS_GRADES = """# extrapolation grades gamma with the B-basis .yaml and its active set. Forces are those of
# potential.yace, but energies omit the per-atom reference energies E0 = {e0} eV;
# for total energies without grades use:  pair_style pace / pair_coeff * * potential.yace {elements}
pair_style      pace/extrapolation
pair_coeff      * * potential.yaml potential.asi {elements}
fix             grades all pair 100 pace/extrapolation gamma 1
compute         maxgamma all reduce max f_grades
variable        skip equal "c_maxgamma < 5"
dump            extrapolative all custom 100 extrapolative.dump id type x y z f_grades
dump_modify     extrapolative skip v_skip
thermo_style    custom step temp pe press c_maxgamma
"""
LAMMPS_PAIR = """# residual delta shipped as base + correction: the sum of two potentials
pair_style      hybrid/overlay pace pace
pair_coeff      * * pace 1 potential.yace {elements}
pair_coeff      * * pace 2 potential.correction.yace {elements}
thermo_style    custom step temp pe press
"""
LAMMPS_TAIL = """velocity        all create 300 42
fix             md all nvt temp 300 300 0.1
run             1000
"""


def _elements(camp: Campaign) -> list[str]:
    cfg = yaml.safe_load(camp.attrs().get("config_yaml") or "{}") or {}
    els = (cfg.get("system") or {}).get("elements")
    if els:
        return list(els)
    sets = [s for s in ("dft", "selected", "pool") if camp.has_structures(s)]
    return sorted({el for a in camp.read_structures(sets[0]) for el in a.get_chemical_symbols()}) if sets else []


def _lammps_input(model, elements: list[str]) -> str:
    from .trainer.pacemaker import model_e0

    if model is None:
        return "# no final ACE in this campaign yet\n"
    els = " ".join(elements) or "X"
    if model.metrics.get("single_file", 1.0) == 0.0 and ".correction.yace" in model.files:
        pair = LAMMPS_PAIR.format(elements=els)
    elif ".asi" in model.files:
        pair = LAMMPS_GRADES.format(elements=els, e0=json.dumps(model_e0(model)))
    else:
        pair = LAMMPS_PACE.format(elements=els)
    return LAMMPS_HEAD.format(elements=els) + pair + LAMMPS_TAIL


def export_results(camp: Campaign, outdir: str | Path) -> dict[str, str]:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    final = camp.load_model("ace_final") if camp.has_model("ace_final") else None
    if final is not None:
        files = dict(final.files)
        if ".usage.txt" in files:  # the trainer wrote it with its own file names: "<name>: ..."
            text = files[".usage.txt"].decode()
            name = re.escape(text.split(":", 1)[0])
            files[".usage.txt"] = re.sub(rf"(?<![\w-]){name}(?=[.:])", "potential", text).encode()
        for suffix, path in replace(final, files=files).write(out, stem="potential").items():
            written[f"potential{suffix}"] = path
    for name in ("ace_base", "ace_dft_only"):
        if camp.has_model(name):
            written.update({f"{name}{s}": p for s, p in camp.load_model(name).write(out / "models").items()})
    if camp.has_model("mace_ft_0"):
        written["mace_finetuned.model"] = camp.load_model("mace_ft_0").write(out, stem="mace_finetuned")[".model"]
    elements = _elements(camp)
    e0 = camp.read_json("metrics/e0") or {}
    e0 = {el: float(e0.get(el, 0.0)) for el in elements}
    for set_name, source in (("dft", "dft"), ("surrogate", "mace"), ("holdout", "dft")):
        if not camp.has_labels(set_name, source):
            continue
        ls = camp.labelled_set(set_name, source)
        p = out / f"{set_name}_{source}.xyz"
        write(p, ls.to_atoms(), format="extxyz")
        written[p.name] = str(p)
        try:  # pacemaker's DataFrame: energy_corrected = energy - sum of E0 (/metrics/e0)
            from .trainer.pacemaker import to_dataframe

            q = out / f"{set_name}_{source}.pckl.gzip"
            to_dataframe(ls, e0).to_pickle(q, compression="gzip")
            written[q.name] = str(q)
        except (ImportError, ValueError) as err:  # no pandas, or elements outside system.elements
            log.warning("no DataFrame for %s/%s: %s", set_name, source, err)
    (out / "in.lammps").write_text(_lammps_input(final, elements))
    metrics = {n: camp.read_json(f"metrics/{n}") for n in ("evaluation", "e0", "step1_sampling",
                                                             "step2_active_learning", "plain_dft_loop")}
    metrics["steps"] = camp.steps()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    written["in.lammps"], written["metrics.json"] = str(out / "in.lammps"), str(out / "metrics.json")
    log.info("exported %d files to %s", len(written), out)
    return written
