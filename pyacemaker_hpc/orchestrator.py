"""The pipeline as a short sequence of resumable steps.

Rank 0 runs the steps and alone writes the campaign; every other rank serves the farm.
A step that finished with the same inputs is skipped; a changed config re-runs exactly
the steps whose inputs (their config sections and upstream outputs) changed.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .campaign import Campaign
from .config import Config, config_text
from .parallel import Farm, Team, Terminated
from .parallel.farm import install_signal_handlers
from .steps.context import StepContext, run_step
from .steps.evaluate import Evaluate
from .steps.plain_loop import PlainDftLoop
from .steps.s1_sampling import Sampling
from .steps.s2_active_learning import ActiveLearning
from .steps.s3_finetune import Finetune
from .steps.s4_surrogate_md import SurrogateSampling
from .steps.s5_label import SurrogateLabelling
from .steps.s6_base_ace import BaseAce
from .steps.s7_delta import DeltaLearning

log = logging.getLogger("pyacemaker_hpc")

DISTILLATION = (Sampling, ActiveLearning, Finetune, SurrogateSampling, SurrogateLabelling, BaseAce,
                DeltaLearning, Evaluate)
PLAIN_DFT_LOOP = (Sampling, PlainDftLoop, Evaluate)


def pipeline(cfg: Config):
    return DISTILLATION if cfg.distillation.enable_mace_distillation else PLAIN_DFT_LOOP


def run(cfg: Config, team: Team | None = None) -> int:
    """Run (or resume) the campaign of ``cfg``. Returns a process exit code."""
    team = team or Team.create(cfg.parallel.model_dump())
    farm = Farm(team)
    install_signal_handlers()
    if not team.is_coordinator:
        farm.serve()
        return 0
    log.info("ranks: %d; groups: %s", team.size, team.groups)
    camp = None
    try:
        camp = Campaign(cfg.campaign.path, config_yaml=config_text(cfg))
        ctx = StepContext(cfg=cfg, camp=camp, farm=farm, workdir=Path(cfg.campaign.workdir).resolve(),
                          outdir=Path(cfg.campaign.output_dir).resolve())
        for step_cls in pipeline(cfg):
            run_step(step_cls(), ctx)
        from .export import export_results

        export_results(camp, ctx.outdir)
        log.info("campaign complete: %s; results in %s", cfg.campaign.path, ctx.outdir)
        farm.shutdown()
        return 0
    except Terminated as err:
        log.warning("%s", err)
        return _abort(team, camp, 143)
    except BaseException:
        log.exception("the campaign stopped with an error (the campaign file keeps all finished work)")
        return _abort(team, camp, 1)
    finally:
        if camp is not None:
            camp.close()


def _abort(team: Team, camp, code: int) -> int:
    """Close the campaign, then end every rank (workers may be inside a long task)."""
    if camp is not None:
        camp.close()
    if not team.serial:
        team.comm.Abort(code)
    return code
