"""The repository passes `ruff check` (its settings: ruff.toml; ruff comes with `pip install -e .[test]`)."""
import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO


def test_ruff_check_is_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed: pip install ruff (or pip install -e .[test])")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, ("ruff check found problems (fix them; `ruff check --fix` does the safe ones):\n"
                                  + done.stdout + done.stderr)
