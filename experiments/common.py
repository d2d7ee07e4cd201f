"""Shared machinery of the experiment scripts: the synthetic benchmark and its cached micro backbone
(the demo's), training and evaluation through stock fairseq-train / fairseq-generate (commands built
from configs/demo/caption_prompt.yaml with overrides), and result tables and plots."""
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from ofa_prompt.yaml_config import build_command  # noqa: E402

for noisy in ("matplotlib", "PIL"):  # their DEBUG lines (a line per PNG chunk) would bury the progress lines
    logging.getLogger(noisy).setLevel(logging.WARNING)

BASE_CONFIG = os.path.join(REPO, "configs", "demo", "caption_prompt.yaml")
TASKS = {
    "caption": dict(task="caption", file="caption", cols="0,4,2", scoring="ofa_caption", metric="CIDEr", extra=[]),
    "vqa": dict(task="vqa_gen", file="vqa", cols="0,5,2,3,4", scoring="ofa_vqa", metric="accuracy",
                extra=["task_options.ans2label-file=$DEMO_DATA/vqa_answers.txt"]),
    "refcoco": dict(task="refcoco", file="refcoco", cols="0,4,2,3", scoring="ofa_refcoco", metric="Acc@0.5", extra=[]),
    # the paper's setup (OFA's --add-caption): premise and hypothesis do not fit the demo's 16 source tokens
    "snli_ve": dict(task="snli_ve", file="snli_ve", cols="0,2,3,4,5", scoring="ofa_snli_ve", metric="accuracy",
                    extra=["task_options.add-caption=true", "task_options.max-src-length=64"]),
}
# learning rates per method for the micro backbone (prompts need a large one, as in the paper)
NO_PROMPTS = ["train.encoder-prompt=false", "train.decoder-prompt=false", "train.encoder-prompt-length=null",
              "train.decoder-prompt-length=null"]  # the base config's prompt options would be an error without prompts
METHODS = {
    "finetune": ["tuning=finetune", *NO_PROMPTS, "train.lr=5e-4"],
    "prompt": ["tuning=prompt", "train.lr=0.1"],
    "adapter": ["tuning=adapter", *NO_PROMPTS, "train.adapter=true", "train.adapter-dim=32", "train.lr=1e-3"],
    "bitfit": ["tuning=bitfit", *NO_PROMPTS, "train.bitfit=true", "train.lr=1e-2"],
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_backbone(quick: bool) -> str:
    """The demo's synthetic data and micro backbone: scripts/demo.sh makes them once, and again when
    configs/demo changes (the experiments must not tune a stale backbone)."""
    demo = os.path.join(REPO, ".cache", "demo-quick" if quick else "demo")
    os.environ["DEMO_DIR"], os.environ["DEMO_DATA"] = demo, os.path.join(demo, "data")
    os.environ["DEMO_RUNS"] = os.path.join(demo, "runs")
    env = {**os.environ, "DEMO_QUICK": "1" if quick else "0", "DEMO_BACKBONE_ONLY": "1"}
    subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh")], cwd=REPO, env=env, check=True)
    return os.path.join(demo, "runs", "backbone.pt")


def task_overrides(task: str, split_data=True):
    t = TASKS[task]
    data = f"$DEMO_DATA/downstream_{t['file']}"
    return [f"task={t['task']}", f"data={data}_train.tsv,{data}_valid.tsv", f"test_data={data}_test.tsv",
            f"task_options.selected-cols={t['cols']}", f"generate.scoring={t['scoring']}", *t["extra"]]


def run(cmd, log_path):
    with open(log_path, "w") as f:
        p = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"command failed ({log_path}):\n{' '.join(cmd)}\n{tail}")
    with open(log_path) as f:
        return f.read()


def train(name: str, out: str, task: str, overrides, updates: int):
    """Train with stock fairseq-train; returns (checkpoint, seconds, log text)."""
    save = os.path.join(out, "runs", name)
    # a fresh run: fairseq-train would resume from an earlier run's checkpoint_last.pt (made maybe with
    # another backbone) and, once that reached --max-update, report its old result as new
    shutil.rmtree(save, ignore_errors=True)
    os.makedirs(save)
    cmd = build_command(BASE_CONFIG, [*task_overrides(task), *overrides, f"train.save-dir={save}",
                                      f"train.max-update={updates}", f"train.total-num-update={max(updates, 1)}",
                                      f"train.warmup-updates={min(50, max(updates // 4, 1))}", "train.log-interval=10"])
    log(f"train {name}: {' '.join(cmd[:3])} ... ({updates} updates)")
    start = time.time()
    text = run(cmd, os.path.join(out, "runs", f"{name}.train.log"))
    return os.path.join(save, "checkpoint_last.pt"), time.time() - start, text


def evaluate(name: str, out: str, task: str, checkpoint: str, overrides=()) -> float:
    """The task's metric from stock fairseq-generate on the test split."""
    cmd = build_command(BASE_CONFIG, [*task_overrides(task), *overrides], checkpoint=checkpoint)
    text = run(cmd, os.path.join(out, "runs", f"{name}.generate.log"))
    metric = TASKS[task]["metric"]
    found = re.findall(rf"Generate test with beam=\d+: .*?{re.escape(metric)}: ([\d.]+)", text)
    if not found:
        raise RuntimeError(f"no {metric} in {name}'s fairseq-generate output")
    log(f"  {name}: {metric} {float(found[-1]):.4f}")
    return float(found[-1])


def validation(task: str, every: int):
    """fairseq-train options for OFA's validation by greedy generation every `every` updates, keeping
    checkpoint_best.pt by the task's score (and only the newest interval checkpoint)."""
    metric = "cider" if task == "caption" else "score"
    return ["train.disable-validation=false", f"train.eval-{'cider' if task == 'caption' else 'acc'}=true",
            "train.eval-args={beam: 1, max_len_b: 40}", f"train.validate-interval-updates={every}",
            "train.validate-interval=1000000", f"train.save-interval-updates={every}", "train.keep-interval-updates=1",
            f"train.best-checkpoint-metric={metric}", "train.maximize-best-checkpoint-metric=true"]


_STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| "
_VALID = re.compile(_STAMP + r".*valid on 'valid' subset \|.*?\| (?:cider|score) ([\d.]+) \|.*?num_updates (\d+)", re.M)
_BEGIN = re.compile(_STAMP + r".*begin training epoch 1\b", re.M)
_EPOCH = re.compile(r"epoch \d+:\s+\d+ / (\d+) ")  # the progress bar's total (lines every --log-interval)
_EPOCH_1_END = re.compile(r"\| train \| epoch 001 \|.*?\| num_updates (\d+)")  # summary after the first epoch


def validation_curve(text: str):
    """[(updates, validation score, seconds since training began)] from a fairseq-train log, and the
    updates per epoch; a ValueError if either is missing."""
    began = datetime.fromisoformat(_BEGIN.search(text).group(1))
    points = {int(u): (float(s), (datetime.fromisoformat(t) - began).total_seconds()) for t, s, u in _VALID.findall(text)}
    if not points:
        raise ValueError("no validation scores in the fairseq-train log")
    per_epoch = _EPOCH.search(text) or _EPOCH_1_END.search(text)
    if per_epoch is None:
        raise ValueError("no updates-per-epoch in the fairseq-train log (no progress line, first epoch unfinished)")
    return [(u, s, t) for u, (s, t) in sorted(points.items())], int(per_epoch.group(1))


def trainable(text: str):
    total, trained = re.findall(r"num\. shared model params: ([\d,]+) \(num\. trained: ([\d,]+)\)", text)[-1]
    return int(trained.replace(",", "")), int(total.replace(",", ""))


def save_results(out: str, name: str, rows, header, note: str, command: str):
    """results.md (table + how it was made), results.json."""
    os.makedirs(out, exist_ok=True)
    lines = [f"# {name}", "", note, "", f"Made with `{command}`.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"header": header, "rows": rows}, f, indent=1)
    print("\n".join(lines[6:]))


def plot(path, title, series, xlabel, ylabel, kind="line", xticks=None):
    """series: {label: (xs, ys)}; kind 'bar' draws grouped bars over xticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7 if kind == "bar" else 6, 4))
    if kind == "bar":
        width = 0.8 / max(len(series), 1)
        for i, (label, (xs, ys)) in enumerate(series.items()):
            ax.bar([x + i * width for x in range(len(ys))], ys, width, label=label)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(xticks))], xticks)
    else:
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if kind == "bar":  # beside the plot: bars fill the whole height
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cli(description):
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="a few updates on the quick demo data (for tests)")
    ap.add_argument("--out", help="output folder (default docs/<experiment>, quick: .cache/experiments/<experiment>)")
    ap.add_argument("--updates", type=int, help="training updates per run (default 200, quick 3)")
    return ap
