"""The demo end to end, shortened (DEMO_QUICK=1: tiny data, a few updates): every stage runs through
stock fairseq-train / fairseq-generate and the final table comes out."""
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the demo end to end


def test_quick_demo_end_to_end(tmp_path):
    env = {**os.environ, "DEMO_QUICK": "1", "DEMO_DIR": str(tmp_path / "demo")}
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    # each stage prints the stock fairseq command it runs
    assert len(re.findall(r"^\+ fairseq-train ", out, re.M)) == 2
    assert len(re.findall(r"^\+ fairseq-generate ", out, re.M)) == 2
    assert "--tuning-method prompt" in out and "--tuning-method finetune" in out
    assert "--task mix" in out  # the backbone learns the pretraining mix of all four tasks
    for stem in ("caption", "vqa", "refcoco", "snli_ve"):
        assert re.search(rf"train: \d+ rows from \S*pretrain_{stem}_train\.tsv", out), stem
    assert "torch.cuda.amp.autocast" not in out  # fairseq's deprecation warning, once per update, is silenced
    trained, total, share = re.search(r"trainable parameters\s+([\d,]+) of ([\d,]+) \(([\d.]+)%\)", out).groups()
    trained, total = int(trained.replace(",", "")), int(total.replace(",", ""))
    assert 0 < trained < total and abs(float(share) - 100 * trained / total) < 0.01
    assert re.search(r"CIDEr, frozen backbone \(untuned\)\s+[\d.]+", out)
    assert re.search(r"CIDEr, prompt-tuned\s+[\d.]+", out)
    runs = tmp_path / "demo" / "runs"
    assert (runs / "backbone.pt").is_file() and (runs / "caption_prompt" / "checkpoint_last.pt").is_file()
    # the backbone is cached: a second run reuses it
    again = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "cached:" in again.stdout and len(re.findall(r"^\+ fairseq-train ", again.stdout, re.M)) == 1
    # a backbone made with other configs/demo settings is not reused
    (runs / "backbone.pt.recipe").write_text("older settings\n")
    stale = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert stale.returncode == 0, (stale.stdout + stale.stderr)[-4000:]
    assert "training it again" in stale.stdout and len(re.findall(r"^\+ fairseq-train ", stale.stdout, re.M)) == 2
    assert (runs / "backbone.pt.recipe").read_text() != "older settings\n"
