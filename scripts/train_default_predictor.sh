#!/usr/bin/env bash
# docs/predictor.md, "The shipped predictors": trains the checkpoints whose records that section shows.
# Train the predictors shipped as invwnn/rewind/predictors/default_predictor.pt (K = 15, the paper's window, used by
# invwnn) and invwnn/rewind/predictors/default_predictor_k5.pt (K = 5, used by invwnn+), from a trajgen collection.
#
# Reproduce from scratch (2-core CPU; the collection takes the longest):
#   .venv/bin/trajgen collect --runs 100 --store data/traj.zarr      # seed 0, 512 steps, every 4
#   scripts/train_default_predictor.sh data/traj.zarr
# Seeded (--seed 0): the run split, the window samples (held-out runs, and the training runs that
# fit the damped line's horizon) and the initialisation are fixed; the window order depends on how
# the loader workers interleave, so the last digits can differ.
# Each checkpoint records its held-out evaluation; `invwnn evaluate CKPT --store STORE --write`
# recomputes it later, and scripts/predictor_doc.py rebuilds docs/predictor.md's figures from it.
set -euo pipefail
STORE="${1:-data/traj.zarr}"
BIN="${BIN:-.venv/bin}"
OUT="${OUT:-invwnn/rewind/predictors/default_predictor.pt}"
OUT_K5="${OUT_K5:-invwnn/rewind/predictors/default_predictor_k5.pt}"

"$BIN/invwnn" train --store "$STORE" --out "$OUT" --steps 3000 --batch-size 4096 \
    --window 15 --back 3 --width 64 --kind-dim 8 --val-fraction 0.1 --seed 0 --workers 1 --quiet
"$BIN/invwnn" train --store "$STORE" --out "$OUT_K5" --steps 3000 --batch-size 4096 \
    --window 5 --back 3 --width 64 --kind-dim 8 --val-fraction 0.1 --seed 0 --workers 1 --quiet
# generalisation to an unseen architecture: every vit run held out (figures only, not shipped)
"$BIN/invwnn" train --store "$STORE" --out data/invwnn_heldout_vit.pt --steps 3000 --batch-size 4096 \
    --val-archs vit --seed 0 --workers 1 --quiet
"$BIN/invwnn" inspect "$OUT"
"$BIN/invwnn" inspect "$OUT_K5"
"$BIN/python" scripts/predictor_doc.py
