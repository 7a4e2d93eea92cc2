#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment with the pinned stack of
# DESIGN.md. Safe to run twice: a finished install is detected by a stamp file that
# records the hash of this script, so a second run returns in a second.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${PYACEMAKER_VENV:-$here/.venv}
stamp=$venv/.pyacemaker-setup-done
want=$(sha256sum "$here/scripts/setup_env.sh" "$here/setup.cfg" 2>/dev/null | sha256sum | cut -c1-16)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $venv is up to date"; exit 0
fi

# GPAW compiles against libxc and BLAS: Debian packages, installed when we are root.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if ! dpkg -s libxc-dev libopenblas-dev >/dev/null 2>&1; then
    echo "[setup] apt-get install libxc-dev libopenblas-dev"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libxc-dev libopenblas-dev >/dev/null
  fi
else
  dpkg -s libxc-dev libopenblas-dev >/dev/null 2>&1 || \
    echo "[setup] warning: not root; make sure libxc and an openblas are installed for GPAW"
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip="$venv/bin/python -m pip install -q --disable-pip-version-check"
# torch first: the CPU wheel, so that nothing later drags in the CUDA build.
$pip "torch==2.13.0"
$pip \
  "numpy==2.3.5" "pandas==2.3.3" "scipy==1.17.1" "scikit-learn==1.9.1" \
  "ase==3.29.0" "h5py==3.14.0" "pyyaml" "pydantic>=2,<3" \
  "mpich==5.0.2" "mpi4py==4.1.2" \
  "mace-torch==0.3.16" "e3nn==0.4.4" \
  "python-ace==0.4.0rc1" \
  "tensorflow-cpu==2.20.*" "tf_keras==2.20.1" "matscipy==1.3.1" "sympy==1.14.0" \
  "questionary" "rich" "matplotlib" "tqdm" \
  "pytest==9.2.0" "pytest-mpi==0.6" "pytest-timeout"
# tensorpotential declares tensorflow[and-cuda]: install it without its dependencies.
$pip --no-deps "tensorpotential==0.6.2.1"
# GPAW builds from source (~1 min) against libxc/openblas; its C sources are C++17, so
# the compiler must be g++ (plain gcc fails on <algorithm>). gpaw-data ships PAW setups.
"$venv/bin/python" -c "import gpaw" 2>/dev/null || CC=${GPAW_CC:-g++} $pip "gpaw==26.7.0"
$pip "gpaw-data==1.2.1"
# the project itself, editable
$pip --no-deps -e "$here"
"$venv/bin/python" -m pip check || echo "[setup] pip check reported the known tensorpotential pin; ignored"
echo "$want" > "$stamp"
echo "[setup] done: $venv"
