#!/usr/bin/env bash
# Reproduce the MetaOptNet table (docs/reference_numbers.md) plus the group-sparse SVM head
# for one dataset: train every head with MetaOptNet's protocol (ResNet-12, defaults per
# dataset), meta-test each best checkpoint on the same 1000 1-shot and 5-shot episodes,
# compare all of them on identical episodes.
#
#   bash scripts/reproduce_metaoptnet.sh {mini-imagenet|cifar-fs|fc100} DATA_ROOT [OUT_DIR]
#
# Extra flags for every `metasparse train` go in $TRAIN_FLAGS (e.g. TRAIN_FLAGS="--num-workers 8
# --amp"); for evaluate/compare in $EVAL_FLAGS. A run that already has last.pt is resumed, a
# finished one is skipped, so the script can be re-run after an interruption.
# Budget: each run is 60 epochs x 1000 batches of 8 episodes (GPU-hours each on one GPU).
set -euo pipefail
DATASET=${1:?usage: reproduce_metaoptnet.sh DATASET DATA_ROOT [OUT_DIR]}
DATA_ROOT=${2:?usage: reproduce_metaoptnet.sh DATASET DATA_ROOT [OUT_DIR]}
OUT=${3:-runs/reproduce-$DATASET}
MS=${MS:-metasparse}
TRAIN_FLAGS=${TRAIN_FLAGS:-}
EVAL_FLAGS=${EVAL_FLAGS:-}
mkdir -p "$OUT"

# name|head flags
RUNS=(
  "protonet|--head protonet"
  "ridge|--head ridge"
  "svm|--head svm"
  "gs-svm-0.001|--head group-sparse-svm --lambda-ratio 0.001"
  "gs-svm-0.01|--head group-sparse-svm --lambda-ratio 0.01"
  "gs-svm-0.1|--head group-sparse-svm --lambda-ratio 0.1"
)

for spec in "${RUNS[@]}"; do
  name=${spec%%|*}; flags=${spec#*|}
  run="$OUT/$name"
  if [ -f "$run/done" ]; then
    echo "== $name: already trained"
  elif [ -f "$run/last.pt" ]; then
    echo "== $name: resuming"
    $MS train --out "$run" --resume $TRAIN_FLAGS && touch "$run/done"
  else
    echo "== $name: training"
    # shellcheck disable=SC2086
    $MS train --dataset "$DATASET" --data-root "$DATA_ROOT" $flags --out "$run" $TRAIN_FLAGS && touch "$run/done"
  fi
  # shellcheck disable=SC2086
  $MS evaluate --checkpoint "$run/best.pt" --shot 1 5 --episodes 1000 --seed 0 --out "$run/test.json" --force $EVAL_FLAGS
done

ckpts=()
for spec in "${RUNS[@]}"; do ckpts+=("$OUT/${spec%%|*}/best.pt"); done
# shellcheck disable=SC2086
$MS compare "${ckpts[@]}" --shot 1 5 --episodes 1000 --seed 0 --out "$OUT/compare" --force $EVAL_FLAGS

echo
# our numbers next to MetaOptNet's published ones (docs/reference_numbers.md), one table
python3 "$(dirname "$0")/reference_table.py" "$DATASET" "$OUT" "${RUNS[@]%%|*}"
