#!/usr/bin/env bash
# What setting up an environment costs: wall time and size on disk of
#   1. the development venv, built by tools/setup_venv.sh (numpy 1, learn2learn built from
#      source, the [dev] and [bench] extras), and
#   2. a plain venv without the [l2l] extra: the pinned torch / torchvision, then this
#      package with the [dev] extra and numpy 2 (two timed steps).
# Each is built from nothing in a fresh folder under $WORK (default: a new temporary folder),
# removed afterwards unless KEEP=1.  Prints one line per step and the numpy, cvxpylayers
# and torch each venv ended with.  Usage: bash scripts/measure_setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${WORK:-$(mktemp -d)}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

now() { date +%s.%N; }
size() { du -sh "$1" | cut -f1; }
versions() {
  "$1/bin/python" -c "import numpy, torch, importlib.metadata as m; \
print(f'numpy {numpy.__version__}, torch {torch.__version__}, cvxpylayers {m.version(\"cvxpylayers\")}')"
}
pip_q() { "$@" 2>&1 | grep -v "^WARNING: Location '.*' is ignored" || true; }

echo "machine: $(nproc) cores, $(uname -m), $("$PYTHON" --version 2>&1)"

t0=$(now)
VENV="$WORK/dev" bash tools/setup_venv.sh >/dev/null
t1=$(now)
printf 'dev venv (tools/setup_venv.sh): %.0f s, %s; %s\n' "$(echo "$t1 - $t0" | bc)" "$(size "$WORK/dev")" \
  "$(versions "$WORK/dev")"

t0=$(now)
"$PYTHON" -m venv "$WORK/np2"
pip_q "$WORK/np2/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
t1=$(now)
pip_q "$WORK/np2/bin/pip" install -q "numpy>=2" -e "$ROOT[dev]"
t2=$(now)
printf 'plain venv, numpy 2, no [l2l]: torch + torchvision %.0f s, the rest %.0f s, %s; %s\n' \
  "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(size "$WORK/np2")" "$(versions "$WORK/np2")"
