"""What every step gets: the config, the campaign, the farm, directories, and the rule that
decides whether a step must run (its inputs' hash)."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..campaign import Campaign
from ..config import Config
from ..core.models import DONE, PENDING, TrainedModel
from ..parallel import Farm

log = logging.getLogger("pyacemaker_hpc")


def digest(obj) -> str:
    """sha256 of a JSON-able object (sorted keys): the identity of a step's inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class StepContext:
    cfg: Config
    camp: Campaign
    farm: Farm
    workdir: Path
    outdir: Path
    resuming: bool = False  # the current step was interrupted with the same inputs
    timings: dict = field(default_factory=dict)

    def output_hash(self, step: str) -> str:
        """Upstream steps' outputs enter downstream inputs, so a change propagates."""
        return self.camp.step_info(step).get("outputs_sha256", "")

    def model_path(self, name: str, suffix: str) -> str:
        """Write a stored model into the shared workdir (verified sha256) and return the path."""
        p = self.workdir / "models" / f"{name}{suffix}"
        model = self.camp.load_model(name)
        if not p.exists() or p.read_bytes() != model.files[suffix]:
            model.write(p.parent, stem=name)
        return str(p)

    def load_model(self, name: str) -> TrainedModel:
        return self.camp.load_model(name)


class Step:
    """A resumable unit. Subclasses set ``name`` and implement ``inputs`` and ``run``.

    ``run`` returns a digest of what it produced; it must skip items already finished
    when ``ctx.resuming`` (same inputs as the interrupted attempt).
    """

    name = "step"

    def inputs(self, ctx: StepContext) -> dict:
        raise NotImplementedError

    def run(self, ctx: StepContext) -> str:
        raise NotImplementedError

    def stale_outputs(self, ctx: StepContext) -> list[str]:
        """Campaign paths that ``run`` reuses when resuming. They are removed before a fresh
        start: an attempt with other inputs may have left them, and if the fresh attempt is
        killed before overwriting them, its resume must not take them for its own."""
        return []


def run_step(step: Step, ctx: StepContext) -> bool:
    """Run ``step`` unless it is done with identical inputs. Returns True if it ran."""
    h = digest(step.inputs(ctx))
    info = ctx.camp.step_info(step.name)
    if info.get("status") == DONE and info.get("inputs_sha256") == h:
        log.info("[%s] done earlier with the same inputs: skipped", step.name)
        return False
    ctx.resuming = info.get("status") not in (DONE, PENDING, None) and info.get("inputs_sha256") == h
    log.info("[%s] %s", step.name, "resuming" if ctx.resuming else "starting")
    if not ctx.resuming:
        ctx.camp.delete(*step.stale_outputs(ctx))
    t0 = time.time()
    ctx.camp.set_step(step.name, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                      inputs_sha256=h, error="", finished="")
    try:
        out = step.run(ctx)
    except BaseException as err:
        status = "interrupted" if isinstance(err, (KeyboardInterrupt,)) or type(err).__name__ == "Terminated" else "failed"
        ctx.camp.set_step(step.name, status=status, error=f"{type(err).__name__}: {err}"[:2000],
                          seconds=time.time() - t0)
        raise
    dt = time.time() - t0
    ctx.timings[step.name] = dt
    ctx.camp.set_step(step.name, status=DONE, finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                      outputs_sha256=out or h, seconds=dt)
    log.info("[%s] done in %.1f s", step.name, dt)
    return True
