#!/usr/bin/env bash
# Installs what the tests need (scripts/setup_env.sh) and runs the default test suite
# (real MACE, pacemaker, GPAW and mpirun on tiny inputs). Extra arguments go to pytest;
# `-m slow` runs the long ones (kill tests, full quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -m "not slow" -q -p no:cacheprovider --timeout=1200 "$@"
