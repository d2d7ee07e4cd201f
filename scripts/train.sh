#!/usr/bin/env bash
# Train with stock fairseq-train from a YAML configuration; key=value arguments override it.
#   bash scripts/train.sh configs/ofa_base/caption_prompt.yaml [lr=0.01 max-epoch=5 ...]
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 CONFIG.yaml [key=value ...]" >&2
  exit 2
fi
# Through this checkout's package (whose import loads nothing: fairseq is not imported to build the command).
errors=$(mktemp)
command=$(PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" python3 -m ofa_prompt.yaml_config "$@" 2>"$errors") || { cat "$errors" >&2; rm -f "$errors"; exit 2; }
rm -f "$errors"
echo "+ $command"
# fairseq's import prints torch's deprecation of the torch.jit.script that fairseq's modules apply (not your code)
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:\`torch.jit.script\` is deprecated:FutureWarning"
eval "$command"
