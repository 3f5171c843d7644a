#!/usr/bin/env bash
# Create .venv and install agora with what its tests need, on a machine with only Python >= 3.10 and PyPI.
#
#   bash launch/install.sh            # CPU: torch 2.13.0 (the CPU build), MPICH from PyPI, agora (the agora-marl distribution) editable
#   AGORA_TORCH="torch==2.13.0" AGORA_MPI=site bash launch/install.sh   # on a cluster, keep the site's MPI
#
# torch is installed first and pinned: an unpinned torch requirement would pull several GB of CUDA wheels.
# AGORA_MPI=pip (default) installs mpi4py with the MPICH wheel; AGORA_MPI=site builds mpi4py against the `mpicc`
# on PATH instead (see docs/cluster.md for CUDA-aware MPIs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${AGORA_VENV:-.venv}
TORCH=${AGORA_TORCH:-torch==2.13.0}
MPI=${AGORA_MPI:-pip}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
pip install $TORCH  # unquoted on purpose: it may carry pip flags (--index-url ...)
# A .venv made before the package was renamed holds this checkout as the distribution `agora`: drop it, or its
# top-level `agents`, `launch`, ... modules would stay importable beside agora_marl.
if "$VENV/bin/python" -m pip show -f agora 2>/dev/null | grep -q "__editable___agora_"; then pip uninstall -y agora; fi
if [ "$MPI" = site ]; then
  pip install --no-binary=mpi4py --no-cache-dir mpi4py
  pip install -e ".[test]"
else
  pip install -e ".[test,mpi]"
fi
# Debian packages some tests need, installed when missing and apt-get can (as root, or sudo without a password):
# apt_install "WHAT SKIPS WITHOUT THEM" [APT-GET OPTION...] PACKAGE...
apt_install() {
  local skips=$1; shift
  SUDO=; [ "$(id -u)" = 0 ] || { sudo -n true 2>/dev/null && SUDO=sudo; } || SUDO=none
  if ! command -v apt-get >/dev/null 2>&1 || [ "$SUDO" = none ]; then
    echo "install.sh: no apt-get as root: not installing $* ($skips)"
  elif ! { $SUDO apt-get install -y -q "$@" >/dev/null ||
           { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "$@" >/dev/null; }; }; then
    echo "install.sh: apt-get could not install $* ($skips, and fails in CI)"
  fi
}
# The watch page's browser test (tests/test_agents_watch.py) drives Debian's chromium through playwright (never
# `playwright install`, which downloads browsers). AGORA_CHROMIUM=skip skips it.
if [ "${AGORA_CHROMIUM:-}" != skip ] && [ ! -x /usr/bin/chromium ]; then
  apt_install "the watch page's browser test skips" chromium
fi
# The simulated cluster (tests/cluster/) runs a real SLURM with munge on network namespaces; srun --mpi=pmix loads
# libpmix.so from libpmix-dev. AGORA_CLUSTER=skip skips them.
if [ "${AGORA_CLUSTER:-}" != skip ] && ! { command -v slurmctld && command -v slurmd && command -v munged &&
                                           ldconfig -p | grep -q 'libpmix\.so '; } >/dev/null 2>&1; then
  apt_install "the simulated cluster's tests skip" --no-install-recommends slurm-wlm munge libpmix-dev
fi
"$VENV/bin/python" -c "import agora_marl, torch, mpi4py.MPI as M; print('agora', agora_marl.__version__, 'installed: torch', torch.__version__, '|', M.Get_library_version().splitlines()[0])"
