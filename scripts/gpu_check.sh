#!/usr/bin/env bash
# GPU check for metasparse: one CUDA device, at most ~5 minutes, on a machine with only
# torch, torchvision, numpy, scipy, h5py, matplotlib, tqdm and pytest (what needs
# learn2learn, cvxpy or qpth is skipped with a line saying so).
#   1. the tests that have a CUDA variant (device augmentation, the training step's
#      options, the sampler's pinned loader, the heads' host syncs), limit 60 s;
#   2. scripts/gpu_check.py, limit 240 s: ResNet-12 forward + backward (bf16, channels-last,
#      cudnn.benchmark) and its fraction of the bf16 peak; `metasparse train` end to end on
#      MetaOptNet-format miniImageNet pickles (group-sparse SVM, SVM, ProtoNet; 15- and
#      5-shot): episodes/s, data-wait fraction, heads' share of the step; the heads alone
#      at d = 16000.  Writes OUT_DIR/gpu_check.json.
# Usage: bash scripts/gpu_check.sh [OUT_DIR] [gpu_check.py options, e.g. --dry-run]
# Dry run on the CPU first: bash scripts/gpu_check.sh /tmp/gpu_check_dry --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PY:-}" ]; then :; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
OUT=${1:-runs/gpu_check}
shift || true
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== 1/2 tests with a CUDA variant, limit 60 s"
timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/episodes/test_episode_deferred.py \
  tests/engine/test_fast_path_options.py tests/episodes/test_episode_sampler.py tests/solvers/test_host_syncs.py \
  2>&1 | tail -n 6 || echo "!! tests failed or timed out"

echo "== 2/2 measurements, limit 240 s"
timeout 240 "$PY" scripts/gpu_check.py --out "$OUT" "$@" || echo "!! gpu_check.py failed or timed out"
