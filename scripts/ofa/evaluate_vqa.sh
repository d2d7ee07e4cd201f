#!/usr/bin/env bash
# OFA's run_scripts/vqa/evaluate_vqa_{allcand,beam,unconstrained}.sh with stock fairseq-generate:
#   MODE=allcand (default) | beam | unconstrained  bash scripts/ofa/evaluate_vqa.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
split=${SPLIT:-val}
data=${DATA:-$OFA_DIR/dataset/vqa_data/vqa_$split.tsv}
ans2label_file=${ANS2LABEL_FILE:-$OFA_DIR/dataset/vqa_data/trainval_ans2label.pkl}
path=${CHECKPOINT:-$OFA_DIR/checkpoints/vqa_large_best.pt}
mode=${MODE:-allcand}
result_path=${RESULT_PATH:-./results/vqa_${split}_$mode}
selected_cols=0,5,2,3,4
case $mode in
  allcand) evaluate_args "\"ans2label_file\":\"$ans2label_file\""; mode_args=(--batch-size=${BATCH_SIZE:-8}) ;;
  beam) evaluate_args "\"ans2label_file\":\"$ans2label_file\""
        mode_args=(--batch-size=${BATCH_SIZE:-16} --beam-search-vqa-eval --beam=5 --unnormalized --temperature=1.0) ;;
  unconstrained) evaluate_args  # no answer list: the answer is generated freely
        mode_args=(--batch-size=${BATCH_SIZE:-16} --beam-search-vqa-eval --beam=5 --unnormalized --temperature=1.0) ;;
  *) echo "MODE=$mode: one of allcand, beam, unconstrained" >&2; exit 2 ;;
esac

run fairseq-generate "$data" --task=vqa_gen --ema-eval "${mode_args[@]}" \
  "${evaluate[@]}" "${extra_args[@]}"
