#!/usr/bin/env bash
# The protocol behind docs/results.md: for each scenario, search every method's hyperparameters on
# the tuning seed's validation split (`invwnn tune`), then bench all methods on seeds 0-2 with the
# choices (`invwnn bench`), then rebuild docs/results.md. Resumable: a scenario whose tuning record
# or results already exist is not redone (delete them to redo).
#
#   JOBS=16 DEVICE=cuda scripts/fair_bench.sh [scenario ...]     # default: all six
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
DEVICE=${DEVICE:-cpu}
INVWNN=${INVWNN:-.venv/bin/invwnn}
PYTHON=${PYTHON:-.venv/bin/python}
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(random10 random50 class label-noise overfit backdoor)
for s in "${scenarios[@]}"; do
    [ -f "invwnn/bench/tuned/$s.json" ] || \
        $INVWNN tune --scenario "$s" --jobs "$JOBS" --device "$DEVICE" --no-progress ${DATA_ROOT:+--data-root "$DATA_ROOT"}
    [ -f "results/$s/results.json" ] || \
        $INVWNN bench --scenario "$s" --jobs "$JOBS" --device "$DEVICE" --no-progress ${DATA_ROOT:+--data-root "$DATA_ROOT"}
done
$PYTHON scripts/results_doc.py
