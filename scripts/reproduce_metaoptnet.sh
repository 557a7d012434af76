#!/usr/bin/env bash
# Reproduce the MetaOptNet table (docs/reference_numbers.md) plus the group-sparse SVM head
# for one dataset: train every head with MetaOptNet's protocol (configs/DATASET.yaml and
# configs/heads/*.yaml), meta-test each best checkpoint on the same 1000 1-shot and 5-shot
# episodes, compare all of them on identical episodes. Every argument and configuration is
# checked before the first model trains (not after six of them).
#
#   bash scripts/reproduce_metaoptnet.sh {mini-imagenet|tiered-imagenet|cifar-fs|fc100} DATA_ROOT [OUT_DIR]
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
CONFIGS="$(cd "$(dirname "$0")/.." && pwd)/configs"
case "$DATASET" in
  mini-imagenet|tiered-imagenet|cifar-fs|fc100) ;;
  *) echo "reproduce_metaoptnet.sh: DATASET must be mini-imagenet, tiered-imagenet, cifar-fs or fc100, got '$DATASET'" >&2; exit 2 ;;
esac
[ -d "$DATA_ROOT" ] || { echo "reproduce_metaoptnet.sh: DATA_ROOT $DATA_ROOT is not a folder" >&2; exit 2; }
command -v "${MS%% *}" >/dev/null || { echo "reproduce_metaoptnet.sh: '$MS' not found (set MS=...)" >&2; exit 2; }

# name = a head configuration in configs/heads/
RUNS=(protonet ridge svm gs-svm-0.001 gs-svm-0.01 gs-svm-0.1)

# every run's configuration and the evaluation flags, checked before any training
for name in "${RUNS[@]}"; do
  # shellcheck disable=SC2086
  $MS train --config "$CONFIGS/$DATASET.yaml" "$CONFIGS/heads/$name.yaml" --data-root "$DATA_ROOT" \
    $TRAIN_FLAGS --print-config > /dev/null || { echo "reproduce_metaoptnet.sh: bad configuration for $name" >&2; exit 2; }
done
# shellcheck disable=SC2086
$MS evaluate --check-flags --checkpoint "$OUT/x.pt" --shot 1 5 --episodes 1000 $EVAL_FLAGS \
  || { echo "reproduce_metaoptnet.sh: bad EVAL_FLAGS '$EVAL_FLAGS'" >&2; exit 2; }
mkdir -p "$OUT"

for name in "${RUNS[@]}"; do
  run="$OUT/$name"
  if [ -f "$run/done" ]; then
    echo "== $name: already trained"
  elif [ -f "$run/last.pt" ]; then
    echo "== $name: resuming"
    $MS train --out "$run" --resume $TRAIN_FLAGS && touch "$run/done"
  else
    echo "== $name: training"
    # shellcheck disable=SC2086
    $MS train --config "$CONFIGS/$DATASET.yaml" "$CONFIGS/heads/$name.yaml" --data-root "$DATA_ROOT" \
      --out "$run" $TRAIN_FLAGS && touch "$run/done"
  fi
  # shellcheck disable=SC2086
  $MS evaluate --checkpoint "$run/best.pt" --shot 1 5 --episodes 1000 --seed 0 --out "$run/test.json" --force $EVAL_FLAGS
done

ckpts=()
for name in "${RUNS[@]}"; do ckpts+=("$OUT/$name/best.pt"); done
# shellcheck disable=SC2086
$MS compare "${ckpts[@]}" --shot 1 5 --episodes 1000 --seed 0 --out "$OUT/compare" --force $EVAL_FLAGS

echo
# our numbers next to MetaOptNet's published ones (docs/reference_numbers.md), one table
python3 "$(dirname "$0")/reference_table.py" "$DATASET" "$OUT" "${RUNS[@]}"
