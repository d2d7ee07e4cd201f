#!/usr/bin/env bash
# OFA's run_scripts/caption/train_caption_stage2.sh with stock fairseq-train (self-critical CIDEr optimization).
set -euo pipefail
source "$(dirname "$0")/common.sh"
data_dir=${DATA_DIR:-$OFA_DIR/dataset/caption_data}
data=${DATA:-$data_dir/caption_stage2_train.tsv,$data_dir/caption_val.tsv}
restore_file=${RESTORE_FILE:-$OFA_DIR/checkpoints/caption_stage1_best.pt}
save_dir=${SAVE_DIR:-./stage2_checkpoints/$METHOD}
lr=${LR:-$(method_lr 1e-5)}
batch_size=2 update_freq=4 drop_path=0.0 dropout=0.0
train_args

run fairseq-train "$data" \
  --selected-cols=1,4,2 --task=caption \
  --criterion=scst_reward_criterion \
  --lr-scheduler=polynomial_decay --lr="$lr" --end-learning-rate=2e-7 \
  --max-epoch=${MAX_EPOCH:-5} --warmup-ratio=0.06 \
  --no-epoch-checkpoints --keep-best-checkpoints=1 \
  --save-interval=1 --validate-interval=1 \
  --save-interval-updates=500 --validate-interval-updates=500 \
  --eval-cider --eval-cider-cached-tokens="$data_dir/cider_cached_tokens/coco-valid-words.p" \
  --eval-args='{"beam":5,"max_len_b":16,"no_repeat_ngram_size":3}' \
  --best-checkpoint-metric=cider --maximize-best-checkpoint-metric \
  --max-src-length=80 --max-tgt-length=20 \
  --freeze-encoder-embedding --freeze-decoder-embedding \
  --scst --scst-cider-cached-tokens="$data_dir/cider_cached_tokens/coco-train-words.p" \
  --scst-args='{"beam":5,"max_len_b":16,"no_repeat_ngram_size":3}' \
  "${train[@]}" "${extra_args[@]}"
