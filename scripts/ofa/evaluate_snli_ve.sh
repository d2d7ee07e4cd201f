#!/usr/bin/env bash
# OFA's run_scripts/snli_ve/evaluate_snli_ve.sh with stock fairseq-generate.
set -euo pipefail
source "$(dirname "$0")/common.sh"
split=${SPLIT:-snli_ve_test}
data=${DATA:-$OFA_DIR/dataset/snli_ve_data/$split.tsv}
path=${CHECKPOINT:-$OFA_DIR/checkpoints/snli_ve_large_best.pt}
result_path=${RESULT_PATH:-./results/snli_ve}
selected_cols=0,2,3,4,5
evaluate_args

run fairseq-generate "$data" --task=snli_ve --batch-size=${BATCH_SIZE:-8} \
  "${evaluate[@]}" "${extra_args[@]}"
