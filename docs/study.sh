#!/usr/bin/env bash
# The Fashion-MNIST study behind docs/RESULTS.md: every row, 3 seeds, one fixed training budget.
# Usage: docs/study.sh [OUT_DIR]   (default runs/study; needs `make` and dataset-fashion-mnist)
# Each run: CIFAR-stem ResNet-18 at width 0.25, the first 5,000 training images at 32 px, 4 epochs of
# batch 128 (156 steps), kNN (k 200, t 0.1) after every epoch on 1,000 test images; then kNN and a
# linear probe on the final encoder with 5,000 train / 2,000 test images.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/study}
FM=/usr/share/datasets/fashion-mnist
TRAIN=$FM/train-images-idx3-ubyte.gz
TEST=$FM/t10k-images-idx3-ubyte.gz
BIN=bin/salient
SEEDS=${SEEDS:-"1 2 3"}
COMMON="--limit 5000 --arch resnet18 --stem cifar --width 0.25 --epochs 4 --batch 128 --lr 0.06 --knn-data $TEST --knn-bank 5000 --knn-limit 1000"
EVAL="--train $TRAIN --test $TEST --limit-train 5000 --limit-test 2000 --resize 32 --json"
mkdir -p "$OUT"
declare -A ROWS=(
  [moco]="--method moco --masking none"
  [moco_random]="--method moco --masking random --fill hp"
  [moco_sal_hp]="--method moco --masking saliency --fill hp"
  [moco_sal_blur]="--method moco --masking saliency --fill blur"
  [moco_sal_mean]="--method moco --masking saliency --fill mean"
  [simclr]="--method simclr --masking none --temperature 0.5"
  [simclr_sal_hp]="--method simclr --masking saliency --fill hp --temperature 0.5"
)
ORDER="moco moco_random moco_sal_hp moco_sal_blur moco_sal_mean simclr simclr_sal_hp"
for seed in $SEEDS; do
  # Baselines: raw pixels (seed-free) and the encoder at random initialisation.
  if [ "$seed" = "$(echo $SEEDS | cut -d' ' -f1)" ]; then
    for kind in knn linear; do
      $BIN eval $kind --raw-pixels $EVAL > "$OUT/raw_pixels.$kind.json"
    done
  fi
  for kind in knn linear; do
    $BIN eval $kind --random-init --seed $seed --arch resnet18 --stem cifar --width 0.25 --in-channels 1 --cache "$OUT/cache" $EVAL \
      > "$OUT/random_init.s$seed.$kind.json"
  done
  for row in $ORDER; do
    dir="$OUT/$row.s$seed"
    rm -rf "$dir"
    start=$(date +%s)
    echo "$BIN train --data $TRAIN --out $dir $COMMON ${ROWS[$row]} --seed $seed" > "$OUT/$row.s$seed.cmd"
    $BIN train --data $TRAIN --out "$dir" $COMMON ${ROWS[$row]} --seed $seed 2> "$OUT/$row.s$seed.log" | tail -3 >> "$OUT/$row.s$seed.log"
    echo $(( $(date +%s) - start )) > "$OUT/$row.s$seed.seconds"
    for kind in knn linear; do
      $BIN eval $kind --checkpoint "$dir/last.safetensors" $EVAL > "$OUT/$row.s$seed.$kind.json"
    done
    echo "done $row seed $seed"
  done
done
