#!/usr/bin/env bash
# The tests, on a fresh machine too: installs what is missing (scripts/install.sh), then runs pytest.
#   bash scripts/test.sh                 # everything (what CI runs)
#   bash scripts/test.sh -m "not slow"   # the unit tests only, without the end-to-end runs
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec python3 -m pytest -q tests "$@"
