#!/usr/bin/env bash
# The calibration study of docs/calibration.md: the overfitting regime on the embedded SmolLM2.
# Every cell is saved as it finishes; re-running skips finished cells (resumable), so each
# phase can be stopped and started again. Specs name normalization and init_scale
# explicitly: both defaults changed during the study (sum -> mean, 0.05 -> 0.4), and cells
# keep the settings they were trained with.
#   A  selection, seed 0: which settings make ScalaBL calibrated (chosen on validation only)
#   B  3 seeds of MLE and ScalaBL under both normalisations, and of initial sigma 0.4 (ARC-Easy)
#   C  the baselines and the width candidates in the regime (ARC-Easy)
#   D  OpenBookQA with mean-normalised scores: the second data set
#   E  per-byte scores on both data sets (seed 0), then two optimizer candidates (var_lr,
#      training particles) that no session has run yet
#   P  the probes: posterior width (trains one model), the mechanism and BMA-sample tables
#      (cells only) and the zero-shot model on the cells' own questions
#   W  the other data sets of the paper (issue 20): WinoGrande-S and BoolQ, 3 seeds of MLE
#      LoRA (both scorings) +- TS, ScalaBL +- TS (the recipe) and Laplace on s; full-rank
#      ScalaBL and BLoB at seed 0. OpenBookQA's summed-score MLE at seeds 1 and 2 too, so
#      every baseline of the bar has 3 seeds
#   L  the larger regime: 256 training questions, 8 epochs (512 steps of 4); MLE LoRA +- TS
#      and ScalaBL +- TS, ARC-Easy at 3 seeds and WinoGrande-S at seed 0
#   O  the paper's OOD protocol: train on OpenBookQA (256 questions, 8 epochs), report on
#      ARC-C, ARC-E and MMLU college chemistry / physics; MLE + TS, ScalaBL, the recipe at 3
#      seeds, BLoB at seed 0
#   G  the prior scale of s (0.3, 0.5, 2 beside the default 1) for ScalaBL on the four
#      in-distribution data sets, seed 0, chosen on validation (posterior_location.py)
#   T  rebuild every table from the finished cells, training nothing, then the bar
#      (calibration_bar.py), how sure each fitted temperature is (temperature_noise.py),
#      whether the two-way tasks beat always giving the frequent answer (majority_baseline.py),
#      where the posterior sits (posterior_location.py) and the OOD
#      protocol's mechanism table and figures (ood_mechanism.py, ood_figures.py)
#   F  the figures of docs/calibration.md, from the cells
set -euo pipefail
OUT=${OUT:-benchmarks/results/calibration}
COMMON=(--train-limit 64 --steps 160 --batch-size 4 --lr 1e-3 --select-limit 100 --eval-limit 200
        --eval-every 32 --curve-limit 50 --no-progress)
OLD="init_scale=0.05"  # the paper's initial sigma, the default until this study
SUM="mle[normalization=sum],mle[normalization=sum]+ts,scalabl[normalization=sum,$OLD],scalabl[normalization=sum,$OLD]+ts"
MEAN="mle[normalization=mean],mle[normalization=mean]+ts,scalabl[normalization=mean,$OLD],scalabl[normalization=mean,$OLD]+ts"
NEW="scalabl[normalization=mean,init_scale=0.4],scalabl[normalization=mean,init_scale=0.4]+ts"
REF="reference[normalization=sum]"
BASELINES="mc_dropout[normalization=mean],map[normalization=mean],blob[normalization=mean],full_rank[normalization=mean,init_scale=0.4]"
WIDTH="scalabl[normalization=mean,kl_weight=16,$OLD],full_rank[normalization=mean,$OLD]"
BYTE="mle[normalization=byte],mle[normalization=byte]+ts,scalabl[normalization=byte,init_scale=0.4],scalabl[normalization=byte,init_scale=0.4]+ts"
OPTIM="scalabl[normalization=mean,init_scale=0.05,var_lr=0.05],scalabl[normalization=mean,init_scale=0.4,num_particles=4]"
LAPLACE="laplace[normalization=mean]"
MLE2="mle[normalization=sum],mle[normalization=sum]+ts,mle[normalization=mean],mle[normalization=mean]+ts"
SEED0="full_rank[normalization=mean,init_scale=0.4],blob[normalization=mean]"
PRIOR="scalabl[normalization=mean,init_scale=0.4,prior_scale=0.3],scalabl[normalization=mean,init_scale=0.4,prior_scale=0.5],scalabl[normalization=mean,init_scale=0.4,prior_scale=2]"
ARC_ALL="$SUM,$REF,$MEAN,$NEW,$BASELINES,$WIDTH,$BYTE,$OPTIM,$PRIOR"
OBQA_ALL="$SUM,$REF,$MEAN,$NEW,$BASELINES,$BYTE,$PRIOR"
NEW_SETS_ALL="$MLE2,$NEW,$LAPLACE,$SEED0,$PRIOR"
LARGE=(--train-limit 256 --steps 512)
LARGE_ALL="$MLE2,$NEW"
OOD_ALL="mle[normalization=mean],mle[normalization=mean]+ts,$NEW,blob[normalization=mean]"
phase=${1:-A}
bench() { scalabl benchmark "${COMMON[@]}" "$@"; }
case "$phase" in
  A) for task in openbookqa arc_easy; do
       bench --tasks "$task" --seeds 0 --output "$OUT/$task" --methods "$SUM,$REF"
     done ;;
  B) bench --tasks arc_easy --seeds 0,1,2 --output "$OUT/arc_easy" --methods "$SUM,$MEAN,$NEW" ;;
  C) bench --tasks arc_easy --seeds 0 --output "$OUT/arc_easy" --methods "$BASELINES,$WIDTH"
     bench --tasks arc_easy --seeds 0,1 --output "$OUT/arc_easy" \
       --methods "scalabl[normalization=mean,kl_weight=16,$OLD]"
     bench --tasks arc_easy --seeds 1,2 --output "$OUT/arc_easy" --methods "$BASELINES" ;;
  D) bench --tasks openbookqa --seeds 0 --output "$OUT/openbookqa" --methods "$MEAN,$NEW"
     bench --tasks openbookqa --seeds 1,2 --output "$OUT/openbookqa" \
       --methods "mle[normalization=mean],mle[normalization=mean]+ts,$NEW"
     bench --tasks openbookqa --seeds 0 --output "$OUT/openbookqa" --methods "$BASELINES" ;;
  E) for task in arc_easy openbookqa; do
       bench --tasks "$task" --seeds 0 --output "$OUT/$task" --methods "$BYTE"
     done
     bench --tasks arc_easy --seeds 0 --output "$OUT/arc_easy" --methods "$OPTIM" ;;
  P) python benchmarks/posterior_width.py --task arc_easy --normalization mean --init-scale 0.05 \
       --out "$OUT/posterior_width_arc_easy_mean_test.json"
     for split in selection report; do
       python benchmarks/calibration_mechanism.py --root "$OUT/arc_easy" --task arc_easy \
         --split "$split" --reference "mle[normalization=sum]" --out "$OUT/mechanism_arc_easy_$split"
       python benchmarks/calibration_mechanism.py --root "$OUT/openbookqa" --task openbookqa \
         --split "$split" --reference "mle[normalization=mean]" --out "$OUT/mechanism_openbookqa_$split"
       for task in arc_easy openbookqa; do
         python benchmarks/bma_samples.py --root "$OUT/$task" --task "$task" --split "$split" \
           --out "$OUT/bma_samples_${task}_$split"
       done
     done
     for task in arc_easy openbookqa; do
       python benchmarks/zero_shot_reference.py --root "$OUT/$task" --task "$task" \
         --out "$OUT/zero_shot_$task.json"
     done ;;
  W) for seeds in 0 1 2; do  # seed by seed, so a sitting's cells are whole seeds
       bench --tasks winogrande_s --seeds "$seeds" --output "$OUT/winogrande_s" \
         --methods "$MLE2,$NEW,$LAPLACE"
       # BoolQ's answers (" no", " yes") are one token each, so summed and mean scores are
       # the same numbers and summed-score MLE would be the same model trained twice
       bench --tasks boolq --seeds "$seeds" --output "$OUT/boolq" \
         --methods "mle[normalization=mean],mle[normalization=mean]+ts,$NEW,$LAPLACE"
     done
     for task in winogrande_s boolq; do
       bench --tasks "$task" --seeds 0 --output "$OUT/$task" --methods "$SEED0"
     done
     bench --tasks openbookqa --seeds 1,2 --output "$OUT/openbookqa" \
       --methods "mle[normalization=sum],mle[normalization=sum]+ts" ;;
  L) bench "${LARGE[@]}" --tasks arc_easy --seeds 0,1,2 --output "$OUT/arc_easy_256" \
       --methods "$LARGE_ALL"
     bench "${LARGE[@]}" --tasks winogrande_s --seeds 0 --output "$OUT/winogrande_s_256" \
       --methods "$LARGE_ALL" ;;
  O) bench "${LARGE[@]}" --protocol ood --seeds 0 --output "$OUT/ood" --methods "$OOD_ALL"
     bench "${LARGE[@]}" --protocol ood --seeds 1,2 --output "$OUT/ood" \
       --methods "mle[normalization=mean],mle[normalization=mean]+ts,$NEW" ;;
  G) for task in arc_easy openbookqa winogrande_s boolq; do
       bench --tasks "$task" --seeds 0 --output "$OUT/$task" --methods "$PRIOR"
     done ;;
  T) bench --tasks arc_easy --seeds 0,1,2 --output "$OUT/arc_easy" --methods "$ARC_ALL" --table-only
     bench --tasks openbookqa --seeds 0,1,2 --output "$OUT/openbookqa" --methods "$OBQA_ALL" \
       --table-only
     for task in winogrande_s boolq; do
       [ -f "$OUT/$task/benchmark.json" ] || continue
       bench --tasks "$task" --seeds 0,1,2 --output "$OUT/$task" --methods "$NEW_SETS_ALL" \
         --table-only
     done
     for task in arc_easy winogrande_s; do
       [ -f "$OUT/${task}_256/benchmark.json" ] || continue
       bench "${LARGE[@]}" --tasks "$task" --seeds 0,1,2 --output "$OUT/${task}_256" \
         --methods "$LARGE_ALL" --table-only
     done
     if [ -f "$OUT/ood/benchmark.json" ]; then
       bench "${LARGE[@]}" --protocol ood --seeds 0,1,2 --output "$OUT/ood" --methods "$OOD_ALL" \
         --table-only
       python benchmarks/ood_mechanism.py
       python benchmarks/ood_figures.py
     fi
     python benchmarks/calibration_bar.py
     python benchmarks/temperature_noise.py
     python benchmarks/majority_baseline.py
     python benchmarks/posterior_location.py ;;
  F) python benchmarks/calibration_figures.py --root "$OUT/arc_easy" --task arc_easy --tag _mean \
       --out docs/img/calibration \
       --methods "mle[normalization=sum],mle[normalization=sum]+ts,scalabl[normalization=mean,$OLD],scalabl[normalization=mean,init_scale=0.4],blob[normalization=mean],mc_dropout[normalization=mean]" \
       --label "mle[normalization=sum]=MLE (summed)" --label "mle[normalization=sum]+ts=MLE (summed) + TS" \
       --label "scalabl[normalization=mean,$OLD]=ScalaBL, initial sigma 0.05" \
       --label "scalabl[normalization=mean,init_scale=0.4]=ScalaBL (default)" \
       --label "blob[normalization=mean]=BLoB" --label "mc_dropout[normalization=mean]=MC dropout"
     python benchmarks/calibration_figures.py --root "$OUT/openbookqa" --task openbookqa --tag _mean \
       --out docs/img/calibration \
       --methods "mle[normalization=mean],mle[normalization=mean]+ts,scalabl[normalization=mean,init_scale=0.4],full_rank[normalization=mean,init_scale=0.4],blob[normalization=mean],mc_dropout[normalization=mean]" \
       --label "mle[normalization=mean]=MLE" --label "mle[normalization=mean]+ts=MLE + TS" \
       --label "scalabl[normalization=mean,init_scale=0.4]=ScalaBL (default)" \
       --label "full_rank[normalization=mean,init_scale=0.4]=ScalaBL full-rank" \
       --label "blob[normalization=mean]=BLoB" --label "mc_dropout[normalization=mean]=MC dropout" ;;
  *) echo "usage: $0 A|B|C|D|E|P|W|L|O|G|T|F" >&2; exit 2 ;;
esac
