#!/usr/bin/env bash
# The tests, on a fresh machine too: installs what is missing (scripts/install.sh), then runs pytest.
#   bash scripts/test.sh                 # everything (what CI runs)
#   bash scripts/test.sh -m "not slow"   # without the end-to-end runs marked slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec python3 -m pytest -q tests "$@"
