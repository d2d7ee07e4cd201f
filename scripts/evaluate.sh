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
# Run as a file, not through the package, so that fairseq is not imported just to build the command.
errors=$(mktemp)
command=$(python3 "$(dirname "$0")/../ofa_prompt/yaml_config.py" --generate "$checkpoint" "$config" "$@" 2>"$errors") || { cat "$errors" >&2; rm -f "$errors"; exit 2; }
rm -f "$errors"
echo "+ $command"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
eval "$command" 2>&1 | tee "$log"
# fairseq-generate ends with "Generate <subset> with beam=<k>: <scorer's result>"
metric=$(grep -E '^Generate .* with beam=' "$log" | tail -n 1 || true)
if [[ -z $metric ]]; then
  echo "no metric found in the fairseq-generate output (does the data have targets, and is --scoring set?)" >&2
  exit 1
fi
echo "metric: ${metric#*: }"
