"""A real-size smoke: an ofa_base-size backbone (6+6 layers, 768 wide, ResNet-101: 183 M parameters) with random
weights, prompt-tuned at 480 px through stock fairseq-train (one update, prompt length 64, a checkpoint
written) and read by stock fairseq-generate (one batch), on the CPU, each run under a memory bound."""
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import BPE, REPO, cold

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402  (the backbone writer and fairseq options of the GPU check)

pytestmark = pytest.mark.slow

# Peak RSS of each run, MiB: measured 3,022 (fairseq-train, 38 s) and 2,285 (fairseq-generate, 63 s) on 2 loaded
# CPU cores (2026-12-06), plus about 30% margin
BOUND_MB = {"fairseq-train": 4000, "fairseq-generate": 3000}


def measured(cmd):
    """Runs `cmd`; its output, and its own peak RSS in MiB (os.wait4's rusage of that process)."""
    started = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0, out[-4000:]
    peak = usage.ru_maxrss / 1024  # Linux: KiB
    name = os.path.basename(cmd[0])
    print(f"{name}: {time.time() - started:.0f} s, peak RSS {peak:,.0f} MiB (bound {BOUND_MB[name]:,})")
    assert peak < BOUND_MB[name], f"{name}: peak RSS {peak:,.0f} MiB over {BOUND_MB[name]:,} MiB"
    return out


def test_ofa_base_prompt_tuning_and_generation_at_480px(tmp_path):
    if not (BPE / "dict.txt").is_file():
        pytest.skip(f"OFA's BPE files not found at {BPE}")
    backbone = tmp_path / "ofa_base_random.pt"
    params = gpu_check.write_backbone(backbone, ["--arch=ofa_prompt_base"], BPE)
    assert 180e6 < params < 186e6, params  # ofa_base: 183 M
    data = gpu_check.write_captions(tmp_path / "captions.tsv", 2, seed=1)
    task = gpu_check.task_options(BPE, 480)
    train = measured(cold(["fairseq-train", str(data), *task, "--arch=ofa_prompt_base", *gpu_check.PROMPT, "--cpu",
                           "--lr=0.03", *gpu_check.train_options(backbone, tmp_path / "run", 1, 1)]))
    assert re.search(r'"num_updates": "1"', train), train[-3000:]
    checkpoint = tmp_path / "run" / "checkpoint_last.pt"
    assert checkpoint.is_file()
    generate = measured(cold(["fairseq-generate", str(data), *task, f"--path={checkpoint}", "--cpu", "--beam=2",
                              "--max-len-b=8", "--no-repeat-ngram-size=3", "--batch-size=2", "--gen-subset=test"]))
    assert sorted(gpu_check.hypotheses(generate)) == [0, 1], generate[-3000:]
