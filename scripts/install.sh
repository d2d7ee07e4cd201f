#!/usr/bin/env bash
# Installs this checkout (editable, with the test extra) and its dependencies, unless Python already
# imports this very checkout with everything it needs. The demo and the tests call it first, so that each
# works on a fresh machine, in either order.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# from / so that the working directory does not shadow what is installed
if (cd / && python3 - "$root" <<'PY'
import importlib.util, os, shutil, sys
spec = importlib.util.find_spec("ofa_prompt")
ok = spec is not None and os.path.dirname(spec.origin) == os.path.join(sys.argv[1], "ofa_prompt")
ok = ok and all(importlib.util.find_spec(m) for m in ("pytest", "fairseq", "torch", "torchvision", "timm"))
sys.exit(0 if ok and shutil.which("fairseq-train") else 1)
PY
); then
  exit 0
fi
echo "installing ofa_prompt from $root (about 5 minutes and 6 GB on a fresh machine)"
python3 -m pip install --upgrade pip >/dev/null 2>&1 || true
if python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  # torchvision must import next to torch: a matching pair (the CPU-only torch 2.13.0 wheel found on some
  # machines has none)
  python3 -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
python3 -m pip install -q -e ".[test]"
