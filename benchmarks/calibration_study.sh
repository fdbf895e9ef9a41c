#!/usr/bin/env bash
# The calibration study of docs/calibration.md: the overfitting regime on the embedded SmolLM2.
# Every cell is saved as it finishes; re-running skips finished cells (resumable), so each
# phase can be stopped and started again. Specs name normalization explicitly: the default
# changed from sum to mean during the study, and cells keep the setting they were trained with.
#   A  selection, seed 0: which settings make ScalaBL calibrated (chosen on validation only)
#   B  3 seeds of MLE and ScalaBL under both normalisations (ARC-Easy)
#   C  the baselines and the width candidates in the regime (ARC-Easy, seed 0)
#   D  OpenBookQA with mean-normalised scores (seed 0)
#   P  the probes: posterior width (trains one model) and the mechanism table (cells only)
#   T  rebuild both tables from the finished cells, training nothing
set -euo pipefail
OUT=${OUT:-benchmarks/results/calibration}
COMMON=(--train-limit 64 --steps 160 --batch-size 4 --lr 1e-3 --select-limit 100 --eval-limit 200
        --eval-every 32 --curve-limit 50 --no-progress)
SUM="mle[normalization=sum],mle[normalization=sum]+ts,scalabl[normalization=sum],scalabl[normalization=sum]+ts"
MEAN="mle[normalization=mean],mle[normalization=mean]+ts,scalabl[normalization=mean],scalabl[normalization=mean]+ts"
REF="reference[normalization=sum]"
BASELINES="full_rank[normalization=mean],blob[normalization=mean],mc_dropout[normalization=mean],map[normalization=mean]"
WIDTH="scalabl[normalization=mean,kl_weight=16],scalabl[normalization=mean,init_scale=0.4],scalabl[normalization=mean,var_lr=0.1]"
ARC_ALL="$SUM,$REF,$MEAN,$BASELINES,$WIDTH"
OBQA_ALL="$SUM,$REF,$MEAN"
phase=${1:-A}
bench() { scalabl benchmark "${COMMON[@]}" "$@"; }
case "$phase" in
  A) for task in openbookqa arc_easy; do
       bench --tasks "$task" --seeds 0 --output "$OUT/$task" --methods "$SUM,$REF"
     done ;;
  B) bench --tasks arc_easy --seeds 0,1,2 --output "$OUT/arc_easy" --methods "$SUM,$MEAN" ;;
  C) bench --tasks arc_easy --seeds 0 --output "$OUT/arc_easy" --methods "$BASELINES,$WIDTH"
     bench --tasks arc_easy --seeds 0,1,2 --output "$OUT/arc_easy" --methods "scalabl[normalization=mean,kl_weight=16]" ;;
  D) bench --tasks openbookqa --seeds 0 --output "$OUT/openbookqa" --methods "$MEAN" ;;
  P) python benchmarks/posterior_width.py --task arc_easy --normalization mean \
       --out "$OUT/posterior_width_arc_easy_mean_test.json"
     for split in selection report; do
       python benchmarks/calibration_mechanism.py --root "$OUT/arc_easy" --task arc_easy \
         --split "$split" --reference "mle[normalization=sum]" --out "$OUT/mechanism_arc_easy_$split"
     done ;;
  T) bench --tasks arc_easy --seeds 0,1,2 --output "$OUT/arc_easy" --methods "$ARC_ALL" --table-only
     bench --tasks openbookqa --seeds 0 --output "$OUT/openbookqa" --methods "$OBQA_ALL" --table-only ;;
  *) echo "usage: $0 A|B|C|D|P|T" >&2; exit 2 ;;
esac
