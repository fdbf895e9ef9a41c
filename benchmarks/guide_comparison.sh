#!/usr/bin/env bash
# The guide-family comparison of docs/guides.md, in the overfitting regime of the calibration
# study (64 training questions, 160 steps of 4 = 10 epochs, lr 1e-3, library defaults for the
# initial sigma and the answer scores; 200 report questions; 100 draws of q per cell for k-hat
# of q and PSIS-LOO of the training questions). Resumable: every finished (family, seed) cell
# is saved and skipped on a re-run; a cell made with other settings is refused.
#   ARC-Easy at seeds 0, 1, 2 and OpenBookQA at seed 0, then the figures into docs/img/.
# Run the two data sets side by side with one thread each (two cores):
#   OMP_NUM_THREADS=1 benchmarks/guide_comparison.sh arc_easy 0,1,2 &
#   OMP_NUM_THREADS=1 benchmarks/guide_comparison.sh openbookqa 0
set -euo pipefail
task=${1:-arc_easy}
seeds=${2:-0}
OUT=${OUT:-benchmarks/results/guide_comparison}
scalabl compare --data "$task" --seeds "$seeds" --output "$OUT/$task" --no-progress
mkdir -p "docs/img/guide_comparison/$task"
cp "$OUT/$task"/guide_comparison_*.png "docs/img/guide_comparison/$task/"
