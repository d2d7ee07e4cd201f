#!/usr/bin/env bash
# OFA's run_scripts/refcoco/evaluate_refcoco.sh (one split) with stock fairseq-generate.
set -euo pipefail
source "$(dirname "$0")/common.sh"
split=${SPLIT:-refcoco_val}
data=${DATA:-$OFA_DIR/dataset/refcoco_data/$split.tsv}
path=${CHECKPOINT:-$OFA_DIR/checkpoints/refcoco_large_best.pt}
result_path=${RESULT_PATH:-./results/refcoco}
selected_cols=0,4,2,3
evaluate_args

run fairseq-generate "$data" --task=refcoco --batch-size=${BATCH_SIZE:-16} \
  --beam=5 --min-len=4 --max-len-a=0 --max-len-b=4 --no-repeat-ngram-size=3 \
  "${evaluate[@]}" "${extra_args[@]}"
