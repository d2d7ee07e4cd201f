#!/usr/bin/env bash
# Evaluate a checkpoint with stock fairseq-generate from a YAML configuration and print the metric.
#   bash scripts/evaluate.sh configs/ofa_base/caption_prompt.yaml runs/ofa_base/caption_prompt/checkpoint_best.pt [key=value ...]
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG.yaml CHECKPOINT [key=value ...]" >&2
  exit 2
fi
config=$1 checkpoint=$2
shift 2
# Through this checkout's package (whose import loads nothing: fairseq is not imported to build the command).
errors=$(mktemp)
command=$(PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" python3 -m ofa_prompt.yaml_config --generate "$checkpoint" "$config" "$@" 2>"$errors") || { cat "$errors" >&2; rm -f "$errors"; exit 2; }
rm -f "$errors"
echo "+ $command"
# fairseq's import prints torch's deprecation of the torch.jit.script that fairseq's modules apply (not your code)
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:\`torch.jit.script\` is deprecated:FutureWarning"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
eval "$command" 2>&1 | tee "$log"
# With --results-path DIR, fairseq-generate writes its output, the metric line included, to
# DIR/generate-<subset>.txt instead of stdout (and the predictions to DIR/<subset>_predict.json).
output=$(python3 - "$command" <<'PY'
import os, shlex, sys

args, found = shlex.split(sys.argv[1]), {}
for i, arg in enumerate(args):
    for name in ("--results-path", "--gen-subset"):
        if arg == name and i + 1 < len(args):
            found[name] = args[i + 1]
        elif arg.startswith(name + "="):
            found[name] = arg.split("=", 1)[1]
if "--results-path" in found:  # fairseq's default --gen-subset is test
    print(os.path.join(found["--results-path"], "generate-%s.txt" % found.get("--gen-subset", "test")))
PY
)
if [[ -n $output ]]; then
  echo "fairseq-generate wrote its output to $output"
  if [[ -f $output ]]; then cp "$output" "$log"; fi
fi
# fairseq-generate ends with "Generate <subset> with beam=<k>: <scorer's result>"
metric=$(grep -E '^Generate .* with beam=' "$log" | tail -n 1 || true)
if [[ -z $metric ]]; then
  echo "no metric found in the fairseq-generate output${output:+ ($output)} (does the data have targets, and is --scoring set?)" >&2
  exit 1
fi
echo "metric: ${metric#*: }"
