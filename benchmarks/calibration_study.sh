#!/usr/bin/env bash
# The calibration study of docs/calibration.md: the overfitting regime on the embedded SmolLM2.
# Every cell is saved as it finishes; re-running skips finished cells (resumable).
# Phase A (selection, seed 0, OpenBookQA): which settings make ScalaBL calibrated? Chosen on
# the validation (selection) split only. Phase B: the chosen settings, 3 seeds, 2 data sets.
set -euo pipefail
OUT=${OUT:-benchmarks/results/calibration}
COMMON=(--train-limit 64 --steps 160 --batch-size 4 --lr 1e-3 --select-limit 100 --eval-limit 200
        --eval-every 32 --curve-limit 50 --no-progress)
phase=${1:-A}
case "$phase" in
  A) for task in ${TASKS:-openbookqa arc_easy}; do
       scalabl benchmark "${COMMON[@]}" --tasks "$task" --seeds 0 --output "$OUT/$task" \
         --methods "${METHODS:-mle,mle+ts,scalabl,reference}"
     done ;;
  B) for task in openbookqa arc_easy; do
       scalabl benchmark "${COMMON[@]}" --tasks "$task" --seeds 0,1,2 --output "$OUT/${task}" \
         --methods "${METHODS:?set METHODS to the chosen specs}"
     done ;;
esac
