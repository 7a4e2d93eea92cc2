"""pyacemaker-hpc CONFIG            run or resume the campaign of CONFIG (under mpirun or not)
pyacemaker-hpc validate CONFIG      check a config and exit
pyacemaker-hpc status CAMPAIGN      steps, DFT jobs done/failed and why
pyacemaker-hpc export CAMPAIGN      potentials, datasets and metrics out of a campaign
pyacemaker-hpc report CAMPAIGN      an HTML report with parity plots"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .config import ConfigError, load_config

COMMANDS = ("run", "validate", "status", "export", "report")


def _setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [rank {rank}] %(message)s", datefmt="%H:%M:%S")


def _rank() -> int:
    for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if k in os.environ:
            return int(os.environ[k])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv = ["run", *argv]
    p = argparse.ArgumentParser(prog="pyacemaker-hpc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "validate"):
        sub.add_parser(name).add_argument("config")
    sub.add_parser("status").add_argument("campaign")
    e = sub.add_parser("export")
    e.add_argument("campaign")
    e.add_argument("-o", "--output", default="export")
    r = sub.add_parser("report")
    r.add_argument("campaign")
    r.add_argument("-o", "--output", default=None)
    r.add_argument("--learning-curve", default=None,
                   help="a benchmarks/dft_efficiency.py JSON to draw (default: learning_curve.json "
                        "beside the campaign, when there)")
    args = p.parse_args(argv)
    rank = _rank()
    _setup_logging(rank)

    if args.cmd in ("run", "validate"):
        try:  # every rank validates the same file: all stop before any work starts
            cfg = load_config(args.config)
        except ConfigError as err:
            if rank == 0:
                print(f"pyacemaker-hpc: error: {err}", file=sys.stderr)
            return 2
        if args.cmd == "validate":
            print(f"{args.config}: valid")
            return 0
        from .orchestrator import run

        return run(cfg)

    from .campaign import Campaign, CampaignError

    try:
        camp = Campaign(args.campaign, readonly=True)
    except CampaignError as err:
        print(f"pyacemaker-hpc: error: {err}", file=sys.stderr)
        return 2
    if args.cmd == "status":
        from .report import status_text

        print(status_text(camp))
    elif args.cmd == "export":
        from .export import export_results

        for name, path in export_results(camp, args.output).items():
            print(f"{name}: {path}")
    elif args.cmd == "report":
        from .report import write_report

        print(write_report(camp, args.output, learning_curve=args.learning_curve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
