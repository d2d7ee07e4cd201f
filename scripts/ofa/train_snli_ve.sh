#!/usr/bin/env bash
# OFA's run_scripts/snli_ve/train_snli_ve.sh with stock fairseq-train.
set -euo pipefail
source "$(dirname "$0")/common.sh"
data_dir=${DATA_DIR:-$OFA_DIR/dataset/snli_ve_data}
data=${DATA:-$data_dir/snli_ve_train.tsv,$data_dir/snli_ve_dev.tsv}
restore_file=${RESTORE_FILE:-$OFA_DIR/checkpoints/$ARCH.pt}
save_dir=${SAVE_DIR:-./snli_ve_checkpoints/$METHOD}
lr=${LR:-$(method_lr 3e-5)}
batch_size=4 update_freq=8 drop_path=0.2 dropout=0.1
train_args

run fairseq-train "$data" \
  --selected-cols=0,2,3,4,5 --task=snli_ve \
  --criterion=adjust_label_smoothed_cross_entropy --label-smoothing=0.0 \
  --lr-scheduler=polynomial_decay --lr="$lr" \
  --max-epoch=${MAX_EPOCH:-5} --warmup-ratio=0.06 \
  --keep-best-checkpoints=1 \
  --save-interval=1 --validate-interval=1 \
  --save-interval-updates=500 --validate-interval-updates=500 \
  --best-checkpoint-metric=snli_score --maximize-best-checkpoint-metric \
  --max-src-length=80 --max-tgt-length=20 \
  --prompt-type=prev_output --add-caption \
  "${train[@]}" "${extra_args[@]}"
