#!/usr/bin/env bash
# Create (or refresh) the development environment in .venv.
#
# Idempotent: when .venv is up to date (its stamp holds the checksum of the files that
# define the environment: setup.cfg, pyproject.toml and this script; by content, not by
# modification time, so a fresh clone does not reinstall into a venv that fits) this
# returns at once.  What a first set-up costs here: 2 to 8 minutes and 6.1 GB (the CUDA build
# of torch that pip takes from this machine's disk; learn2learn compiled from source);
# scripts/measure_setup.sh measures it (BENCHMARKS.md).
# Steps:
#   1. python3 -m venv .venv
#   2. pinned torch==2.14.1 / torchvision==0.29.1 (the releases the dev machines hold)
#   3. learn2learn 0.2.0 built from its sdist with freshly generated Cython output
#      (only learn2learn comes as source: `--no-binary learn2learn`; `:all:` would also
#      compile Cython itself and the sdist's other build requirements from C, minutes)
#      (the C files shipped on PyPI do not compile on Python 3.11), then the
#      packages it imports at run time (gym, requests, scipy, qpth): what the [l2l] extra
#      declares, installed without learn2learn's own requirement list (gsutil and its
#      Google Cloud tree, never used here)
#   4. this package in editable mode with the [dev] and [bench] extras ([bench]: torchopt
#      0.7.x for scripts/head_baselines.py; it requires only torch>=1.13, so the pinned
#      torch/torchvision are left as they are)
# numpy: the package itself takes numpy 1 or 2, but this venv keeps numpy<2 because of the
# learn2learn baselines it carries: every qpth release declares numpy<2 (pip would refuse
# it, or a later install would upgrade numpy under it), and gym 0.26, which learn2learn
# imports, does not support numpy 2 (gym says so itself at import).  A venv without the
# [l2l] extra installs numpy 2 and cvxpylayers 1.x: see README's set-up section.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
STAMP="$VENV/.metasparse-stamp"

WANT=$(cat setup.cfg pyproject.toml tools/setup_venv.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ -x "$PY" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

if [ ! -x "$PY" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
# pip, minus the noise of this machine's local index mirrors ("Location ... is ignored")
pip_q() {
  local rc=0 log
  log=$(mktemp)
  "$PY" -m pip --disable-pip-version-check "$@" >"$log" 2>&1 || rc=$?
  grep -v "^WARNING: Location '.*' is ignored" "$log" || true
  rm -f "$log"
  return $rc
}
PIP=(pip_q)
"${PIP[@]}" install -q --upgrade "pip>=23" "setuptools>=68" wheel

echo "[setup] torch 2.14.1 / torchvision 0.29.1"
"${PIP[@]}" install -q "torch==2.14.1" "torchvision==0.29.1"

if ! "$PY" -c "import learn2learn" >/dev/null 2>&1; then
  echo "[setup] building learn2learn 0.2.0 from source (regenerating its Cython files)"
  "${PIP[@]}" install -q "cython>=3" "numpy>=1.23,<2" "gym" "requests" "scipy" "qpth" "tqdm" "pillow"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "${PIP[@]}" download -q --no-deps --no-binary learn2learn "learn2learn==0.2.0" -d "$work"
  tar -xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work"
  src="$work/learn2learn-0.2.0"
  for pyx in "$src"/learn2learn/data/*.pyx; do
    "$VENV/bin/cython" -3 "$pyx" >/dev/null
  done
  "${PIP[@]}" install -q --no-deps --no-build-isolation "$src"
  "$PY" -c "import learn2learn" 
fi

echo "[setup] metasparse (editable, with dev and bench extras)"
# numpy<2 again here: otherwise a newer cvxpy / cvxpylayers could pull numpy 2 in under qpth and gym
"${PIP[@]}" install -q -e ".[dev,bench]" "numpy>=1.23,<2"
echo "$WANT" > "$STAMP"
echo "[setup] done"
