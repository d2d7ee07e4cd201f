#!/usr/bin/env bash
# The tests, on a fresh machine too: installs what is missing (scripts/install.sh), then runs pytest.
#   bash scripts/test.sh                 # everything (what CI runs): the unit tests, then the end-to-end runs
#   bash scripts/test.sh -m "not slow"   # the unit tests only (about 3 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [[ $# -gt 0 ]]; then
  exec python3 -m pytest -q tests "$@"
fi
# unit tests first: a broken build fails in a minute, not after the end-to-end runs
python3 -m pytest -q -m "not slow" tests
exec python3 -m pytest -q -m slow tests
