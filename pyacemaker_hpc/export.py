"""Write the results a user takes away out of a campaign: the final ACE (.yaml, .yace,
.asi), the fine-tuned MACE, the datasets as extxyz and pacemaker DataFrames, the metrics,
and an example LAMMPS input."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ase.io import write

from .campaign import Campaign

log = logging.getLogger("pyacemaker_hpc")

LAMMPS_EXAMPLE = """# LAMMPS with the ML-PACE package: the final ACE and its active set
units           metal
atom_style      atomic
boundary        p p p
read_data       structure.data            # your structure
pair_style      pace/extrapolation        # or: pair_style pace  (no grades)
pair_coeff      * * potential.yace potential.asi {elements}
fix             grades all pair 100 pace/extrapolation gamma 1
compute         maxgamma all reduce max f_grades
thermo_style    custom step temp pe press c_maxgamma
velocity        all create 300 42
fix             md all nvt temp 300 300 0.1
dump            extrapolative all custom 100 extrapolative.dump id type x y z f_grades
dump_modify     extrapolative skip v_skip
variable        skip equal "c_maxgamma < 5"
run             1000
"""


def export_results(camp: Campaign, outdir: str | Path) -> dict[str, str]:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    if camp.has_model("ace_final"):
        for suffix, path in camp.load_model("ace_final").write(out, stem="potential").items():
            written[f"potential{suffix}"] = path
    for name in ("ace_base", "ace_dft_only"):
        if camp.has_model(name):
            written.update({f"{name}{s}": p for s, p in camp.load_model(name).write(out / "models").items()})
    if camp.has_model("mace_ft_0"):
        written["mace_finetuned.model"] = camp.load_model("mace_ft_0").write(out, stem="mace_finetuned")[".model"]
    for set_name, source in (("dft", "dft"), ("surrogate", "mace"), ("holdout", "dft")):
        if camp.has_labels(set_name, source):
            ls = camp.labelled_set(set_name, source)
            p = out / f"{set_name}_{source}.xyz"
            write(p, ls.to_atoms(), format="extxyz")
            written[p.name] = str(p)
            try:
                from .trainer.pacemaker import to_dataframe

                df = to_dataframe(ls, camp.read_json("metrics/e0") or {})
                q = out / f"{set_name}_{source}.pckl.gzip"
                df.to_pickle(q, compression="gzip")
                written[q.name] = str(q)
            except ImportError:  # pyace not installed: extxyz only
                pass
    elements = " ".join(sorted({s for a in camp.read_structures("selected") for s in a.get_chemical_symbols()})) \
        if camp.has_structures("selected") else "X"
    (out / "in.lammps").write_text(LAMMPS_EXAMPLE.format(elements=elements))
    metrics = {n: camp.read_json(f"metrics/{n}") for n in ("evaluation", "step1_sampling",
                                                             "step2_active_learning", "plain_dft_loop")}
    metrics["steps"] = camp.steps()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    log.info("exported %d files to %s", len(written) + 2, out)
    return written
