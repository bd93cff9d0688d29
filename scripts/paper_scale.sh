#!/usr/bin/env bash
# Writes docs/results/paper-scale.md's run:
# the paper's headline setting end to end (BRIEF Table 1): record torchvision-family
# trajectories with sampled coordinates, train predictors on them, and bench CIFAR-style ResNet-18
# with the whole training set, a random 50% forgotten, every method stopped at Retrain's UA.
#
# On a CUDA machine (the full setting; Fashion-MNIST as 3x32x32 stands in for CIFAR-10, which the
# project's machines cannot download -- pass --dataset cifar10 --data-root DIR where you have it):
#   scripts/paper_scale.sh --device cuda --amp
# The reduced CPU run docs/results/paper-scale.md reports (29 min on a
# shared 2-vCPU VM):
#   scripts/paper_scale.sh --width 8 --width-mult 0.125 --runs 4 --steps 48 --coords 20000 \
#       --train-steps 400 --train-size 2000 --epochs 5 --seeds 3 \
#       --methods invwnn,invwnn+,invwnn-linear,random-label,boundary-shrink,salun,neggrad,task-vector \
#       --out results/paper-cpu
#
# Options (defaults are the GPU setting):
#   --device D        cpu or cuda (collect, train and bench)          [cpu]
#   --amp             bf16 autocast for the bench's training passes (CUDA only)
#   --width W         ResNet-18's stem channels in the bench (64: the standard net) [64]
#   --width-mult M    width multiplier of the collected torchvision nets            [0.5]
#   --runs N          trajectories to collect (the four families in turn)           [32]
#   --steps S         optimizer steps per collected run, a snapshot every step      [512]
#   --coords C        coordinates recorded per run                                   [20000]
#   --train-steps T   predictor training steps                                      [3000]
#   --dataset NAME    bench and collection data                                      [fashion-mnist-rgb]
#   --data-root DIR   where the dataset lives
#   --train-size N    bench training images (0: the whole training set)             [0]
#   --epochs E        original / Retrain epochs                                      [20]
#   --seeds N         bench seeds 0..N-1                                             [3]
#   --methods LIST    bench rows [the paper's Table 1 rows, invwnn+ and finetune]
#   --jobs J          bench worker processes                                         [1]
#   --out DIR         everything goes here                                           [results/paper-scale]
set -euo pipefail
BIN="${BIN:-.venv/bin}"
DEVICE=cpu AMP="" WIDTH=64 WIDTH_MULT=0.5 RUNS=32 STEPS=512 COORDS=20000 TRAIN_STEPS=3000
DATASET=fashion-mnist-rgb DATA_ROOT="" TRAIN_SIZE=0 EPOCHS=20 SEEDS=3 JOBS=1 OUT=results/paper-scale
METHODS="invwnn,invwnn+,invwnn-linear,invwnn+-linear,random-label,boundary-shrink,salun,neggrad,task-vector,finetune"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --amp) AMP="--amp"; shift ;;
    --width) WIDTH="$2"; shift 2 ;;
    --width-mult) WIDTH_MULT="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --coords) COORDS="$2"; shift 2 ;;
    --train-steps) TRAIN_STEPS="$2"; shift 2 ;;
    --dataset) DATASET="$2"; shift 2 ;;
    --data-root) DATA_ROOT="$2"; shift 2 ;;
    --train-size) TRAIN_SIZE="$2"; shift 2 ;;
    --epochs) EPOCHS="$2"; shift 2 ;;
    --seeds) SEEDS="$2"; shift 2 ;;
    --methods) METHODS="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "paper_scale.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
ROOT_FLAG=()
[ -n "$DATA_ROOT" ] && ROOT_FLAG=(--data-root "$DATA_ROOT")
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/log.txt"; }
log "device $DEVICE; collect $RUNS runs x $STEPS steps at width x$WIDTH_MULT, $COORDS coordinates each"

# 1. trajectories of the torchvision families, a snapshot every step (the spacing the applier
#    records), a fixed sample of coordinates per run
SECONDS=0
"$BIN/trajgen" collect --archs resnet18,mobilenet_v2,mobilenet_v3_small,convnext --dataset "$DATASET" \
    "${ROOT_FLAG[@]}" --runs "$RUNS" --steps "$STEPS" --every 1 --coords "$COORDS" --width-mult "$WIDTH_MULT" \
    --device "$DEVICE" --workers 0 --store "$OUT/traj.zarr" --quiet
"$BIN/trajgen" info "$OUT/traj.zarr" | tee -a "$OUT/log.txt"
log "collect: ${SECONDS} s"

# 2. predictors on them: K = 15 (invwnn's window) and K = 5 (invwnn+'s), U = 3, whole runs held out
SECONDS=0
for K in 15 5; do
  "$BIN/invwnn" train --store "$OUT/traj.zarr" --out "$OUT/predictor_k$K.pt" --window "$K" --back 3 \
      --steps "$TRAIN_STEPS" --val-fraction 0.25 --device "$DEVICE" --seed 0 --workers 0 --quiet \
      | tee -a "$OUT/log.txt"
done
log "train: ${SECONDS} s"

# 3. the bench: ResNet-18, whole training set (or --train-size), forget 50%, every method stopped
#    at Retrain's UA; library defaults (no tuning record exists for this setting)
SECONDS=0
"$BIN/invwnn" bench --scenario paper --arch resnet18 --width "$WIDTH" --dataset "$DATASET" "${ROOT_FLAG[@]}" \
    --train-size "$TRAIN_SIZE" --epochs "$EPOCHS" --seeds "$SEEDS" --methods "$METHODS" --tuned none \
    --predictor "$OUT/predictor_k15.pt" --predictor "$OUT/predictor_k5.pt" \
    --device "$DEVICE" $AMP --jobs "$JOBS" --cache-dir "$OUT/bench-cache" --out "$OUT/bench" --no-progress \
    2>&1 | tee -a "$OUT/log.txt"
log "bench: ${SECONDS} s"
cat "$OUT/bench/table.md"
