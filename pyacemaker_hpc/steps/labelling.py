"""Labelling a structure set with the DFT oracle through the farm, never paying twice:
results are cached per item (by structure uid and DFT settings) and committed one by one."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from ..campaign import cache_label, cached_labels
from ..core.models import DONE, FAILED, Label, LabelledSet, structure_uid
from ..oracle._common import estimated_cost
from ..parallel import TaskFailed
from .context import StepContext, digest
from .tasks import dft_task

log = logging.getLogger("pyacemaker_hpc")


def dft_settings_key(ctx: StepContext) -> str:
    cfg = ctx.cfg
    calc = cfg.dft_calculator
    section = getattr(cfg.dft, calc)
    settings = {"calculator": calc, "max_force": cfg.dft.max_force,
                calc: section.identity() if hasattr(section, "identity") else section.model_dump(mode="json")}
    return digest(settings)[:16]


def mixed_kpoint_meshes(section, structures) -> dict[int, Counter]:
    """{atom count: Counter(mesh)} for the cell sizes whose structures a density-based
    k-mesh puts on more than one mesh (empty with a fixed ``kpoint_mesh``, or for a
    calculator without k-points). Same-size cells on different meshes are labels from
    different potential-energy surfaces: expanded Au cells on 3x3x3 instead of 4x4x4 were
    54-78 meV/atom off on Cu-Au at density 2.0 (README), more than every model's error."""
    if not hasattr(section, "mesh") or section.kpoint_mesh is not None:
        return {}
    by_size: dict[int, Counter] = {}
    for at in structures:
        if at.pbc.all():
            by_size.setdefault(len(at), Counter())[section.mesh(at)] += 1
    return {n: c for n, c in by_size.items() if len(c) > 1}


def warn_mixed_meshes(ctx: StepContext, structures, set_name: str) -> None:
    calc = ctx.cfg.dft_calculator
    for n, meshes in mixed_kpoint_meshes(getattr(ctx.cfg.dft, calc, None), structures).items():
        shown = ", ".join(f"{'x'.join(map(str, m))} ({k})" for m, k in meshes.most_common())
        log.warning("[dft] %s: the %d-atom cells fall on %d k-point meshes: %s. dft.%s.kpoint_density "
                    "follows each cell's strain; energies on different meshes can differ by tens of "
                    "meV/atom. Set dft.%s.kpoint_mesh for same-size cells, or a converged density",
                    set_name, n, len(meshes), shown, calc, calc)


def label_set_with_dft(ctx: StepContext, set_name: str) -> LabelledSet:
    """DFT labels for ``/structures/<set_name>``; returns all labels (failed included)."""
    camp, cfg = ctx.camp, ctx.cfg
    structures = camp.read_structures(set_name)
    key = dft_settings_key(ctx)
    cache = cached_labels(camp, "dft", key)
    todo = []
    for i, at in enumerate(structures):
        hit = cache.get(at.info["uid"])
        if hit is None or (hit.status == FAILED and cfg.dft.retry_failed_on_restart):
            todo.append(i)
    n_cached = len(structures) - len(todo)
    warn_mixed_meshes(ctx, structures, set_name)
    log.info("[dft] %s: %d structures, %d already computed, %d to run", set_name, len(structures),
             n_cached, len(todo))

    def on_result(i, res):
        if isinstance(res, TaskFailed):  # the oracle itself crashed: record, keep going
            log.error("[dft] %s item %d: the oracle crashed:\n%s", set_name, i, res.error)
            res = Label.failed(f"oracle crashed: {res.error.strip().splitlines()[-1]}")
        cache_label(camp, "dft", key, structures[i].info["uid"], res)
        cache[structures[i].info["uid"]] = res
        if res.status != DONE:
            log.warning("[dft] %s item %d failed: %s", set_name, i, res.error)

    section = getattr(cfg.dft, cfg.dft_calculator, None)
    mesh = getattr(section, "mesh", None)
    cost = {i: estimated_cost(structures[i], mesh=mesh(structures[i]) if mesh else None) for i in todo}
    root = Path(cfg.dft.workdir).resolve() if cfg.dft.workdir else ctx.workdir / "dft"
    tasks = [(i, dft_task, (cfg, structures[i], str(root / structures[i].info["uid"])))
             for i in todo]
    # most expensive first, so no rank sits idle while the last long job runs
    ctx.farm.map("dft", tasks, on_result, label=f"DFT {set_name}", cost=cost.__getitem__)
    labels = [cache[a.info["uid"]] for a in structures]
    camp.init_labels(set_name, "dft", keep_existing=False)
    camp.put_labels(set_name, "dft", dict(enumerate(labels)))
    return LabelledSet(structures, labels)


def existing_data_key(ctx: StepContext) -> list:
    """Identity of the user's existing DFT files (path, size, mtime): a step input."""
    import os

    out = []
    for ex in ctx.cfg.dft.existing_data:
        st = os.stat(ex.path)
        out.append([ex.model_dump(), st.st_size, int(st.st_mtime)])
    return out


def import_existing_dft(ctx: StepContext) -> LabelledSet:
    """The user's existing DFT labels as the campaign set ``dft_existing`` (no calculation).

    Steps 2, 3 and 7 and the plain loop train on them next to what the campaign computes.
    """
    from ..oracle.dft import import_labelled

    camp, allowed = ctx.camp, set(ctx.cfg.system.elements)
    found = LabelledSet([], [])
    for ex in ctx.cfg.dft.existing_data:
        ls = import_labelled(ex.path, energy_key=ex.energy_key, forces_key=ex.forces_key,
                             stress_key=ex.stress_key).usable()
        for at in ls.structures:
            extra = set(at.get_chemical_symbols()) - allowed
            if extra:
                raise ValueError(f"{ex.path}: elements {sorted(extra)} are not in system.elements")
            own = at.info.get("provenance")
            at.info["provenance"] = f"existing:{ex.path}" + (f":{own}" if own else "")
            at.info["uid"] = structure_uid(at)
        log.info("[dft] imported %d labelled structures from %s", len(ls), ex.path)
        found = found + ls
    if len(found):
        camp.write_structures("dft_existing", found.structures)
        camp.init_labels("dft_existing", "dft", keep_existing=False)
        camp.put_labels("dft_existing", "dft", dict(enumerate(found.labels)))
    return found
