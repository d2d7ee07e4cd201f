#!/usr/bin/env bash
# OFA's run_scripts/vqa/train_vqa_distributed.sh with stock fairseq-train (EMA, all-candidate validation).
set -euo pipefail
source "$(dirname "$0")/common.sh"
data_dir=${DATA_DIR:-$OFA_DIR/dataset/vqa_data}
data=${DATA:-$data_dir/vqa_train.tsv,$data_dir/vqa_val.tsv}
ans2label_file=${ANS2LABEL_FILE:-$data_dir/trainval_ans2label.pkl}
restore_file=${RESTORE_FILE:-$OFA_DIR/checkpoints/$ARCH.pt}
save_dir=${SAVE_DIR:-./vqa_checkpoints/$METHOD}
lr=${LR:-$(method_lr 5e-5)}
total_num_updates=${TOTAL_NUM_UPDATES:-40000}
# OFA's unconstrained_training_flag: no candidate answers, so validation generates freely (beam search)
if [[ ${UNCONSTRAINED:-0} == 1 ]]; then
  inference_args=(--unconstrained-training --val-inference-type=beamsearch --eval-args='{"beam":5}')
else
  inference_args=(--val-inference-type=allcand)
fi
batch_size=4 update_freq=4 drop_path=0.2 dropout=0.1
train_args

run fairseq-train "$data" \
  --selected-cols=0,5,2,3,4 --task=vqa_gen \
  --criterion=adjust_label_smoothed_cross_entropy --label-smoothing=0.1 \
  --lr-scheduler=polynomial_decay --lr="$lr" \
  --total-num-update="$total_num_updates" --warmup-updates=${WARMUP_UPDATES:-1000} \
  --max-update="$total_num_updates" \
  --keep-last-epochs=15 \
  --save-interval=1 --validate-interval=1 \
  --best-checkpoint-metric=vqa_score --maximize-best-checkpoint-metric \
  --max-src-length=80 --max-object-length=30 --max-tgt-length=30 \
  --freeze-encoder-embedding --freeze-decoder-embedding \
  --ans2label-file="$ans2label_file" --valid-batch-size=20 \
  --prompt-type=prev_output --add-object \
  --uses-ema --store-ema --ema-fp32 --ema-decay=${EMA_DECAY:-0.9999} --ema-start-update=0 \
  "${inference_args[@]}" \
  "${train[@]}" "${extra_args[@]}"
