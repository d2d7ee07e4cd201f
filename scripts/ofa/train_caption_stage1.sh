#!/usr/bin/env bash
# OFA's run_scripts/caption/train_caption_stage1.sh with stock fairseq-train (cross-entropy, stage 1).
set -euo pipefail
source "$(dirname "$0")/common.sh"
data_dir=${DATA_DIR:-$OFA_DIR/dataset/caption_data}
data=${DATA:-$data_dir/caption_stage1_train.tsv,$data_dir/caption_val.tsv}
restore_file=${RESTORE_FILE:-$OFA_DIR/checkpoints/$ARCH.pt}
save_dir=${SAVE_DIR:-./stage1_checkpoints/$METHOD}
lr=${LR:-$(method_lr 1e-5)}
batch_size=8 update_freq=4 drop_path=0.1 dropout=0.1
train_args

run fairseq-train "$data" \
  --selected-cols=0,4,2 --task=caption \
  --criterion=adjust_label_smoothed_cross_entropy --label-smoothing=0.1 \
  --lr-scheduler=polynomial_decay --lr="$lr" \
  --max-epoch=${MAX_EPOCH:-5} --warmup-ratio=0.06 \
  --no-epoch-checkpoints --keep-best-checkpoints=1 \
  --save-interval=1 --validate-interval=1 \
  --save-interval-updates=500 --validate-interval-updates=500 \
  --eval-cider --eval-cider-cached-tokens="$data_dir/cider_cached_tokens/coco-valid-words.p" \
  --eval-args='{"beam":5,"max_len_b":16,"no_repeat_ngram_size":3}' \
  --best-checkpoint-metric=cider --maximize-best-checkpoint-metric \
  --max-src-length=80 --max-tgt-length=20 \
  --freeze-encoder-embedding --freeze-decoder-embedding \
  --drop-worst-ratio=0.2 --drop-worst-after=${DROP_WORST_AFTER:-2500} \
  "${train[@]}" "${extra_args[@]}"
