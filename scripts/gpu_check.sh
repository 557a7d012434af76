#!/usr/bin/env bash
# GPU check for metasparse (one CUDA GPU, under 8 minutes):
#   1. the test suite with CUDA visible (tests that have a CUDA variant run it);
#   2. a short ResNet-12 meta-training on fixture data in the real miniImageNet format, on the
#      GPU with bf16 autocast, then meta-testing of the best checkpoint (1- and 5-shot);
#   3. training throughput (episodes/s) of the group-sparse SVM head vs the vanilla SVM head
#      (our dual solver and qpth = MetaOptNet's), full-size ResNet-12 at 84x84, 5-way 15-shot,
#      with the heads' share of a step (goal for the group-sparse head: under 20%);
#   4. the heads benchmark on CUDA (ResNet-12 features, d = 2560 and 16000, 5- and 15-shot).
# Usage: bash scripts/gpu_check.sh [OUT_DIR]      (numbers go to BENCHMARKS.md by hand)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

echo "== 1/4 test suite (CUDA visible), limit 240 s"
timeout 240 "$PY" -m pytest -q -x -n 4 -p no:cacheprovider 2>&1 | tail -n 15 || echo "!! test suite failed or timed out"

echo "== 2/4 short ResNet-12 training on fixture data (miniImageNet MetaOptNet pickles, 84x84), limit 150 s"
DATA="$OUT/mini-imagenet"
"$PY" - "$DATA" <<'PYEOF'
import sys
sys.path.insert(0, "tests")
from fixtures_formats import write_metaoptnet_miniimagenet
write_metaoptnet_miniimagenet(sys.argv[1], classes={"train": 16, "val": 6, "test": 6}, per_class=30)
PYEOF
rm -rf "$OUT/run"
timeout 150 "$PY" -m metasparse train --dataset mini-imagenet --data-root "$DATA" --head group-sparse-svm \
  --lambda-ratio 0.01 --epochs 2 --batches-per-epoch 15 --train-shot 5 --val-episodes 40 --amp \
  --device cuda --num-workers 4 --no-progress --out "$OUT/run"
timeout 60 "$PY" -m metasparse evaluate --checkpoint "$OUT/run/best.pt" --shot 1 5 --episodes 100 \
  --device cuda --no-progress --out "$OUT/eval.json"

echo "== 3/4 training throughput, ResNet-12 84x84, 5-way 15-shot 6-query, 8 episodes/batch, limit 180 s"
timeout 180 "$PY" scripts/train_throughput.py --device cuda --image-size 84 --shot 15 --batches 10 \
  --heads gs-svm svm-dual svm-qpth protonet --json "$OUT/throughput.json" || echo "!! throughput run failed or timed out"
timeout 60 "$PY" scripts/train_throughput.py --device cuda --image-size 84 --shot 15 --batches 10 --amp \
  --heads gs-svm svm-dual --json "$OUT/throughput_amp.json" || true
echo "== 4/4 heads benchmark on CUDA (forward + backward, 8 episodes), limit 120 s"
timeout 60 "$PY" scripts/bench_heads.py --device cuda --features resnet12 --image-size 32 --shots 5 15 --query 6 \
  --no-baselines --out "$OUT/bench_heads_32" || echo "!! bench_heads 32x32 failed or timed out"
timeout 60 "$PY" scripts/bench_heads.py --device cuda --features resnet12 --image-size 84 --shots 5 15 --query 6 \
  --no-baselines --out "$OUT/bench_heads_84" || echo "!! bench_heads 84x84 failed or timed out"
# Optional, not run by default (not timed yet; rendering the procedural grid once takes ~3 CPU
# minutes): Figure 4 on 3D Shapes at full size
# (64 px, the whole 480000-image grid, 5000 steps per run, 5 seeds x 4 rhos x 4 methods):
#   "$PY" scripts/figure4_3dshapes.py --out "$OUT/figure4_full" --device cuda [--data-root DIR_WITH_3dshapes.h5]
echo "gpu_check done; outputs in $OUT"
