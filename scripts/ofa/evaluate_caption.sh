#!/usr/bin/env bash
# OFA's run_scripts/caption/evaluate_caption.sh with stock fairseq-generate; writes
# $result_path/test_predict.json for OFA's coco_eval.py.
set -euo pipefail
source "$(dirname "$0")/common.sh"
data=${DATA:-$OFA_DIR/dataset/caption_data/caption_test.tsv}
path=${CHECKPOINT:-$OFA_DIR/checkpoints/caption_large_best.pt}
result_path=${RESULT_PATH:-./results/caption}
selected_cols=1,4,2 split=${SPLIT:-test}
evaluate_args '"eval_cider":False'

run fairseq-generate "$data" --task=caption --batch-size=${BATCH_SIZE:-16} \
  --beam=5 --max-len-b=16 --no-repeat-ngram-size=3 \
  "${evaluate[@]}" "${extra_args[@]}"
