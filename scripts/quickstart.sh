#!/usr/bin/env bash
# One command from a fresh clone to a finished quickstart campaign: installs what it needs
# (scripts/setup_env.sh), then runs the seven steps under mpirun. Safe to run twice: the
# second run resumes the campaign and finishes in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
nranks=${NRANKS:-2}
if ! ls pyacemaker_hpc/data/cu_demo_foundation_s0.model >/dev/null 2>&1; then
  .venv/bin/python scripts/build_demo_foundation.py
fi
.venv/bin/pyacemaker-hpc validate configs/quickstart.yaml
.venv/bin/mpirun -n "$nranks" .venv/bin/pyacemaker-hpc configs/quickstart.yaml
# step status, DFT jobs, and every model's held-out error next to an ACE fitted on the DFT labels alone
.venv/bin/pyacemaker-hpc status runs/quickstart/campaign.h5
.venv/bin/pyacemaker-hpc report runs/quickstart/campaign.h5 -o runs/quickstart/results/report.html
echo "results: runs/quickstart/results (potential.yaml, potential.yace, potential.asi, mace_finetuned.model, *.xyz, report.html)"
