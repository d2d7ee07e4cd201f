"""benchmarks/gpu_check.sh: its verdicts and parsers (unit tests), and the whole check on the CPU at micro sizes
(`--cpu`), so that the script a GPU session runs once has run here end to end."""
import math
import os
import re
import subprocess
import sys
import zipfile

import pytest
import torch

from conftest import BPE, REFERENCE, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402


def test_losses_and_hypotheses_and_rate_are_read_from_fairseqs_logs():
    log = ('INFO:train_inner:{"epoch": 1, "update": 1.0, "loss": "11.5", "ntokens": "10"}\n'
           'INFO:train_inner:{"epoch": 1, "update": 2.0, "loss": "nan", "ntokens": "10"}\n'
           'INFO:train:{"epoch": 1, "train_loss": "3.0"}\n'
           "H-1\t-0.5\ta red square\nH-0\t-0.7\ta blue\n"
           "INFO:fairseq_cli.generate:Translated 4 sentences (68 tokens) in 13.3s (0.30 sentences/s, 5.12 tokens/s)\n")
    assert gpu_check.losses(log)[0] == 11.5 and math.isnan(gpu_check.losses(log)[1])
    assert len(gpu_check.losses(log)) == 2  # the epoch summary is not an update's loss
    assert gpu_check.hypotheses(log) == {1: "a red square", 0: "a blue"}
    assert gpu_check.generate_rate(log) == 0.30


def _checkpoints(tmp_path, backbone, middle, last, loss="9.5"):
    (tmp_path / "run").mkdir(parents=True)
    torch.save({"model": backbone}, tmp_path / "backbone.pt")
    torch.save({"model": middle}, tmp_path / "run" / "checkpoint_4_10.pt")
    torch.save({"model": last}, tmp_path / "run" / "checkpoint_7_20.pt")
    log = f'INFO:train_inner:{{"loss": "{loss}"}}\n'
    return gpu_check.training_verdict(gpu_check.Run(log, {}), tmp_path / "backbone.pt", tmp_path / "run", 20)


def test_training_verdict_names_a_changed_backbone_unchanged_prompts_or_a_bad_loss(tmp_path):
    w = torch.randn(3, 3).half()
    p0, p1 = torch.zeros(2), torch.ones(2)
    key = "encoder.encoder_prompt_encoder.embedding.weight"
    # fp16 backbone, saved back in float32 (--autocast bf16 keeps float32 weights): the same values
    assert _checkpoints(tmp_path / "a", {"w": w}, {"w": w.float(), key: p0}, {"w": w.float(), key: p1}) == ""
    moved = w.clone()
    moved[0, 0] += 1
    assert "backbone tensors changed, e.g. w" in _checkpoints(tmp_path / "b", {"w": w}, {"w": w, key: p0},
                                                              {"w": moved, key: p1})
    assert _checkpoints(tmp_path / "c", {"w": w}, {"w": w, key: p0}, {"w": w, key: p0}) == "prompts unchanged"
    assert "losses" in _checkpoints(tmp_path / "d", {"w": w}, {"w": w, key: p0}, {"w": w, key: p1}, loss="inf")


def test_slim_wheel_drops_the_java_parts_and_their_record_lines(tmp_path):
    wheel = tmp_path / "pycocoevalcap-1.2-py3-none-any.whl"
    files = {"pycocoevalcap/cider/cider.py": "x = 1\n", "pycocoevalcap/meteor/meteor-1.5.jar": "jar",
             "pycocoevalcap/meteor/data/paraphrase-en.gz": "gz", "pycocoevalcap/spice/lib/Meteor-1.5.jar": "jar"}
    record = "".join(f"{name},sha256=x,3\n" for name in files) + "pycocoevalcap-1.2.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr("pycocoevalcap-1.2.dist-info/RECORD", record)
    gpu_check.slim_wheel(str(wheel))
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == ["pycocoevalcap-1.2.dist-info/RECORD", "pycocoevalcap/cider/cider.py"]
        assert z.read("pycocoevalcap-1.2.dist-info/RECORD").decode().split() == [
            "pycocoevalcap/cider/cider.py,sha256=x,3", "pycocoevalcap-1.2.dist-info/RECORD,,"]


def test_unknown_argument_is_refused_with_the_usage_line():
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--gpu"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip() == "usage: bash benchmarks/gpu_check.sh [--download | --cpu]"


@pytest.mark.slow
def test_the_whole_check_passes_on_the_cpu_at_micro_sizes(tmp_path):
    if not (REFERENCE / "plain.pt").is_file() or not (BPE / "dict.txt").is_file():
        pytest.skip(f"OFA reference fixtures ({REFERENCE}) or BPE files ({BPE}) not found")
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu"], capture_output=True, text=True,
                       env={**os.environ, "OUT": str(tmp_path)}, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    for check in ("reference fixtures, fp32", "reference fixtures, fp16", "reference fixtures, bf16",
                  "micro prompt tuning, fp32, 4 updates", "micro prompt tuning, bf16, 4 updates",
                  "micro beam search with prompts and n-gram blocking, cpu = cpu (fp32)"):
        assert f"gpu_check: {check}: ok" in out, check
    assert re.search(r"^gpu_check: all checks passed \(\d+ s\)$", out, re.M)
    summary = (tmp_path / "summary.md").read_text()  # what a GPU session pastes into the README
    speed = re.findall(r"^\| micro \| (.+?) \| ([\d.]+) \| ([\d,]+) \|$", summary, re.M)
    assert [what for what, _, _ in speed] == [
        "finetuning (fp32)", "prompt tuning (fp32)", "prompt tuning + --image-feature-cache (fp32)",
        "beam search, beam 5, prompts (fp32)"]
    assert all(float(rate) > 0 and int(mb.replace(",", "")) > 100 for _, rate, mb in speed)
    assert summary in out  # printed at the end as well
