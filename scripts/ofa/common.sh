# Sourced by the ported OFA run scripts in this folder: OFA's own option sets for each task, run with
# stock fairseq-train / fairseq-generate. What changed from OFA's run_scripts/: the launcher and
# ../../train.py became fairseq-train (which starts one process per visible GPU itself; choose them with
# CUDA_VISIBLE_DEVICES), ../../evaluate.py became fairseq-generate, and --user-dir names this plugin.
# Everything below can be set from the environment; on CPU set DEVICE_ARGS=--cpu (drops --fp16).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OFA_DIR=${OFA_DIR:-.}                       # OFA's layout: checkpoints/, dataset/, utils/BPE
BPE_DIR=${BPE_DIR:-$OFA_DIR/utils/BPE}
USER_DIR=${USER_DIR:-$here/../../ofa_prompt}
ARCH=${ARCH:-ofa_large}
METHOD=${METHOD:-prompt}                    # prompt (the paper), finetune, adapter or bitfit
PROMPT_LENGTH=${PROMPT_LENGTH:-64}          # the paper's recommendation (OFA's prefix script: 100)
DEVICE_ARGS=${DEVICE_ARGS:---fp16 --fp16-scale-window=512}
EXTRA_ARGS=${EXTRA_ARGS:-}                  # appended last: anything else (sizes, --max-update, ...)
read -r -a device_args <<< "$DEVICE_ARGS"
read -r -a extra_args <<< "$EXTRA_ARGS"

# the switches every released OFA model was trained with (OFA's scripts pass them all)
arch_args=(--encoder-normalize-before --decoder-normalize-before --share-decoder-input-output-embed
           --share-all-embeddings --layernorm-embedding --patch-layernorm-embedding --code-layernorm-embedding
           --add-type-embedding --scale-attn --scale-fc --scale-heads --disable-entangle)

# OFA's flags for each tuning method (run_scripts/refcoco/train_refcoco_{prefix,adapter,bitfit}.sh)
case $METHOD in
  prompt) method_args=(--encoder-prompt --decoder-prompt --encoder-prompt-type=prefix --decoder-prompt-type=prefix
                       "--encoder-prompt-length=$PROMPT_LENGTH" "--decoder-prompt-length=$PROMPT_LENGTH") ;;
  adapter) method_args=(--adapter --adapter-dim=100) ;;
  bitfit) method_args=(--bitfit) ;;
  finetune) method_args=() ;;
  *) echo "METHOD=$METHOD: one of prompt, finetune, adapter, bitfit" >&2; exit 2 ;;
esac

# the learning rate: the paper's 0.03 for prompts, OFA's 1e-4 for adapters and BitFit, else the task's own
method_lr() { case $METHOD in prompt) echo 0.03 ;; adapter|bitfit) echo 1e-4 ;; *) echo "$1" ;; esac; }

run() { echo "+ $*"; "$@"; }

# What every OFA train script passes besides its task's own options. The script sets restore_file,
# save_dir and its defaults for batch_size, update_freq, drop_path and dropout first.
train_args() {
  train=(--bpe-dir="$BPE_DIR" --user-dir="$USER_DIR"
         --restore-file="$restore_file" --reset-optimizer --reset-dataloader --reset-meters
         --save-dir="$save_dir" --arch="$ARCH"
         --batch-size="${BATCH_SIZE:-$batch_size}" --update-freq="${UPDATE_FREQ:-$update_freq}"
         "${arch_args[@]}"
         --resnet-drop-path-rate=0.0 --encoder-drop-path-rate="$drop_path" --decoder-drop-path-rate="$drop_path"
         --dropout="$dropout" --attention-dropout=0.0
         --weight-decay=0.01 --optimizer=adam "--adam-betas=(0.9,0.999)" --adam-eps=1e-08 --clip-norm=1.0
         --log-format=simple --log-interval=10 --fixed-validation-seed=7 --find-unused-parameters
         "${method_args[@]}" --num-bins=1000 --patch-image-size="${PATCH_IMAGE_SIZE:-480}"
         "${device_args[@]}" --num-workers=0)
  mkdir -p "$save_dir"
}

# What every OFA evaluate script passes: the task's data and BPE go in through --model-overrides, as in
# OFA's scripts (the checkpoint provides the rest of the task's settings). Without --scoring the task's own
# metric is printed, into $result_path/generate-$split.txt (fairseq's --results-path), next to OFA's
# $result_path/${split}_predict.json.
evaluate_args() {  # evaluate_args ['"extra_key":"value",...']
  evaluate=(--path="$path" --user-dir="$USER_DIR" --log-format=simple --log-interval=10 --seed=7
            --gen-subset="$split" --results-path="$result_path" "${device_args[@]}" --num-workers=0
            "--model-overrides={\"data\":\"$data\",\"bpe_dir\":\"$BPE_DIR\",\"selected_cols\":\"$selected_cols\"${1:+,$1}}")
}
