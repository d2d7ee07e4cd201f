"""Every shipped configuration runs: scripts/train.sh trains it for 2 updates through fairseq's whole start-up
(argparse, the omegaconf conversion, the task, model, criterion, optimizer and lr scheduler) and
scripts/evaluate.sh scores the checkpoint, with only data, size and device overrides. OFA-format data: the
real GPT-2 BPE, URL-safe base64 images, a pickled answer dictionary as OFA's tools write it."""
import os
import pickle
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tiny_data
from conftest import BPE, REPO
from ofa_prompt.yaml_config import load

pytestmark = pytest.mark.slow

CONFIGS = REPO / "configs"
RUNNABLE = [p for p in sorted(CONFIGS.rglob("*.yaml")) if {"task", "data", "arch"} <= load(str(p)).keys()]
# sizes and devices only: the configurations' own settings (lengths, lr, batch layout, ...) stay as shipped
MICRO = ["train." + o for o in (
    "encoder-layers=2 decoder-layers=2 encoder-embed-dim=32 decoder-embed-dim=32 encoder-ffn-embed-dim=64 "
    "decoder-ffn-embed-dim=64 encoder-attention-heads=2 decoder-attention-heads=2 resnet-type=resnet18 "
    "batch-size=2 max-update=2 fp16=false cpu=true").split()]
DEVICE = "generate.fp16=false generate.cpu=true generate.batch-size=4 task_options.patch-image-size=32".split()
TASKS = ["caption", "vqa_gen", "refcoco", "snli_ve"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    if not (BPE / "encoder.json").is_file():
        pytest.skip(f"OFA's BPE files not found at {BPE}")
    folder = tmp_path_factory.mktemp("ofa_data")
    for task in TASKS:
        # 2 updates within the first epoch: 2 x batch 2 x the largest --update-freq shipped (8)
        tiny_data.write(folder / f"{task}_train.tsv", tiny_data.rows(task, 32, seed=1, urlsafe=True))
        tiny_data.write(folder / f"{task}_test.tsv", tiny_data.rows(task, 4, seed=2, urlsafe=True))
    with open(folder / "trainval_ans2label.pkl", "wb") as f:  # OFA's format: {answer: label}
        pickle.dump({c: i for i, c in enumerate(tiny_data.COLORS)}, f)
    return folder


def overrides(path: Path, data: Path, save_dir: Path):
    cfg = load(str(path))
    task = cfg["task"]
    out = DEVICE + [f"train.save-dir={save_dir}", "restore_file=null", f"task_options.bpe-dir={BPE}"]
    if task == "mix":  # the demo's pretraining: each mixed task reads its own files under the data folder
        return out + [f"data={data}", "text-tokenizer=gpt2"] + [
            "task_options.mix-tasks="
            + repr({t: {"data": f"{t}_train.tsv,{t}_test.tsv"} for t in TASKS}).replace("'", '"')]
    out += [f"data={data}/{task}_train.tsv,{data}/{task}_test.tsv", f"test_data={data}/{task}_test.tsv"]
    if cfg.get("task_options", {}).get("text-tokenizer") == "word":
        out.append("task_options.text-tokenizer=gpt2")  # the demo's word vocabulary is its own data
    if task == "vqa_gen":
        out.append(f"task_options.ans2label-file={data}/trainval_ans2label.pkl")
    return out


def run_config(path: Path, data: Path, folder: Path) -> dict:
    """scripts/train.sh, then (unless a pretraining mix) scripts/evaluate.sh, of one configuration."""
    folder.mkdir(parents=True, exist_ok=True)
    over = overrides(path, data, folder / "run")
    # one thread each, two configurations at a time: these micro runs mostly start Python and fairseq
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = {"train": subprocess.run(["bash", str(REPO / "scripts/train.sh"), str(path), *MICRO, *over],
                                   capture_output=True, text=True, cwd=folder, env=env), "folder": folder}
    checkpoint = folder / "run" / "checkpoint_last.pt"
    if out["train"].returncode == 0 and checkpoint.is_file() and load(str(path))["task"] != "mix":
        out["evaluate"] = subprocess.run(["bash", str(REPO / "scripts/evaluate.sh"), str(path), str(checkpoint), *over],
                                         capture_output=True, text=True, cwd=folder, env=env)
    return out


@pytest.fixture(scope="module")
def runs(request, data, tmp_path_factory):
    """The runs of the configurations this session selected (-k), two at a time."""
    selected = [item.callspec.params["path"] for item in request.session.items
                if item.originalname == "test_every_shipped_config_trains_and_evaluates"]
    root = tmp_path_factory.mktemp("sweep")
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(lambda p: run_config(p, data, root / p.relative_to(CONFIGS).with_suffix("").as_posix()
                                             .replace("/", "_")), selected)
        return dict(zip(selected, done))


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_shipped_config_trains_and_evaluates(path, runs):
    result = runs[path]
    train = result["train"]
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    log = train.stdout + train.stderr
    assert "num_updates 2" in log or "num_updates: 2" in log, log[-2000:]
    assert (result["folder"] / "run" / "checkpoint_last.pt").is_file()
    if load(str(path))["task"] == "mix":
        assert "evaluate" not in result
        return  # a pretraining mix has no fairseq-generate of its own (each task evaluates with its own --task)
    evaluate = result["evaluate"]
    assert evaluate.returncode == 0, evaluate.stdout[-3000:] + evaluate.stderr[-3000:]
    assert "metric: " in evaluate.stdout and "(4 samples)" in evaluate.stdout, evaluate.stdout[-2000:]
