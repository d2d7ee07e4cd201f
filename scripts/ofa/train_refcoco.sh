#!/usr/bin/env bash
# OFA's run_scripts/refcoco/train_refcoco{,_prefix,_adapter,_bitfit}.sh with stock fairseq-train.
set -euo pipefail
source "$(dirname "$0")/common.sh"
data_dir=${DATA_DIR:-$OFA_DIR/dataset/refcoco_data}
data=${DATA:-$data_dir/refcoco_train.tsv,$data_dir/refcoco_val.tsv}
restore_file=${RESTORE_FILE:-$OFA_DIR/checkpoints/$ARCH.pt}
save_dir=${SAVE_DIR:-./refcoco_checkpoints/$METHOD}
lr=${LR:-$(method_lr 3e-5)}
max_epoch=${MAX_EPOCH:-$([[ $METHOD == prompt ]] && echo 100 || echo 5)}   # OFA's prefix script: 100
batch_size=16 update_freq=8 drop_path=0.2 dropout=0.1
train_args

run fairseq-train "$data" \
  --selected-cols=0,4,2,3 --task=refcoco \
  --criterion=adjust_label_smoothed_cross_entropy --label-smoothing=0.1 \
  --lr-scheduler=polynomial_decay --lr="$lr" \
  --max-epoch="$max_epoch" --warmup-ratio=0.06 \
  --no-epoch-checkpoints --keep-best-checkpoints=1 \
  --save-interval=1 --validate-interval=1 \
  --save-interval-updates=500 --validate-interval-updates=500 \
  --eval-acc \
  --eval-args='{"beam":5,"min_len":4,"max_len_a":0,"max_len_b":4}' \
  --best-checkpoint-metric=score --maximize-best-checkpoint-metric \
  --max-src-length=80 --max-tgt-length=20 \
  "${train[@]}" "${extra_args[@]}"
