"""Shared machinery of the experiment scripts: the synthetic benchmark and its backbones (the demo's micro
one and larger ones, each pretrained once on the pretraining mix and cached), runs of stock fairseq-train /
fairseq-generate (commands built from configs/demo/caption_prompt.yaml with overrides) kept in one run
store that every study shares, seeds and their statistics, result tables and plots with error bars."""
import functools
import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from fairseq_log import JSON_LOG, kept_checkpoint, test_score, trainable, validated_checkpoints, validation_curve
from ofa_prompt.yaml_config import build_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

for noisy in ("matplotlib", "PIL"):  # their DEBUG lines (a line per PNG chunk) would bury the progress lines
    logging.getLogger(noisy).setLevel(logging.WARNING)

BASE_CONFIG = os.path.join(REPO, "configs", "demo", "caption_prompt.yaml")
PRETRAIN_CONFIG = os.path.join(REPO, "configs", "demo", "pretrain.yaml")
TASKS = {
    "caption": dict(task="caption", file="caption", cols="0,4,2", scoring="ofa_caption", metric="CIDEr", extra=[]),
    "vqa": dict(task="vqa_gen", file="vqa", cols="0,5,2,3,4", scoring="ofa_vqa", metric="accuracy",
                extra=["task_options.ans2label-file=$DEMO_DATA/vqa_answers.txt"]),
    "refcoco": dict(task="refcoco", file="refcoco", cols="0,4,2,3", scoring="ofa_refcoco", metric="Acc@0.5", extra=[]),
    # the paper's setup (OFA's --add-caption): premise and hypothesis do not fit the demo's 16 source tokens
    "snli_ve": dict(task="snli_ve", file="snli_ve", cols="0,2,3,4,5", scoring="ofa_snli_ve", metric="accuracy",
                    extra=["task_options.add-caption=true", "task_options.max-src-length=64"]),
}
NO_PROMPTS = ["train.encoder-prompt=false", "train.decoder-prompt=false", "train.encoder-prompt-length=null",
              "train.decoder-prompt-length=null"]  # the base config's prompt options would be an error without prompts
PROMPT_LENGTH = 64  # the paper's recommendation
PROMPT_LR = 0.03  # the paper's prompt-tuning learning rate (configs/methods/prompt.yaml)


def prompt_length(n):
    return [f"train.encoder-prompt-length={n}", f"train.decoder-prompt-length={n}"]


# Learning rates of the other methods were chosen on the micro backbone (finetuning from 1e-4..1e-3, adapters
# 1e-4..1e-2, BitFit 1e-3..1e-1); prompt tuning takes the paper's recommended setup: length 64 in every layer
# of both sides, lr 0.03.
METHODS = {
    "finetune": ["tuning=finetune", *NO_PROMPTS, "train.lr=5e-4"],
    "prompt": ["tuning=prompt", *prompt_length(PROMPT_LENGTH), f"train.lr={PROMPT_LR}"],
    "adapter": ["tuning=adapter", *NO_PROMPTS, "train.adapter=true", "train.adapter-dim=32", "train.lr=1e-3"],
    "bitfit": ["tuning=bitfit", *NO_PROMPTS, "train.bitfit=true", "train.lr=1e-2"],
}
# The grids compare_methods.py --lr-grid chooses each method's learning rate from, per task, on validation: each
# method's rate above divided and multiplied by about 3 (prompt tuning: the paper's 0.03 and 3x, 10x above it).
LR_GRIDS = {"finetune": (2e-4, 5e-4, 1e-3), "prompt": (0.03, 0.1, 0.3), "adapter": (3e-4, 1e-3, 3e-3),
            "bitfit": (3e-3, 1e-2, 3e-2)}


@dataclass(frozen=True)
class Size:
    """A backbone size: encoder and decoder of `layers` layers of `width` (FFN twice as wide), ResNet-18
    stem, pretrained the demo's way (configs/demo/pretrain.yaml)."""
    name: str
    width: int
    layers: int
    heads: int

    def overrides(self) -> List[str]:
        return [f"train.{side}-{key}={value}" for side in ("encoder", "decoder")
                for key, value in (("layers", self.layers), ("embed-dim", self.width),
                                   ("ffn-embed-dim", 2 * self.width), ("attention-heads", self.heads))]


# micro is the demo's backbone (configs/demo/common.yaml); the largest pretrains in about 20 minutes on 2 cores
SIZES = {s.name: s for s in (Size("micro", 64, 2, 4), Size("small", 128, 3, 4), Size("medium", 256, 4, 8))}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def demo_dir(quick: bool) -> str:
    return os.path.join(REPO, ".cache", "demo-quick" if quick else "demo")


def _set_demo_env(quick: bool):
    demo = demo_dir(quick)
    os.environ["DEMO_DIR"], os.environ["DEMO_DATA"] = demo, os.path.join(demo, "data")
    os.environ["DEMO_RUNS"] = os.path.join(demo, "runs")


def _demo(quick: bool, until: str, quiet: bool):
    _set_demo_env(quick)
    env = {**os.environ, "DEMO_QUICK": "1" if quick else "0", until: "1"}
    subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh")], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL if quiet else None)


@functools.lru_cache(maxsize=None)
def ensure_backbone(quick: bool, size: str = "micro") -> str:
    """The synthetic data and the backbone of `size`, pretrained on the pretraining mix: scripts/demo.sh
    makes the data and the micro backbone once (again when configs/demo changes); a larger backbone is the
    last checkpoint of its pretraining run (pretraining())."""
    if size == "micro":
        _demo(quick, "DEMO_BACKBONE_ONLY", quiet=False)
        return os.path.join(os.environ["DEMO_RUNS"], "backbone.pt")
    return pretraining(quick, size).checkpoints[-1][2]


PRETRAIN_EVERY = 50  # pretraining runs validate and keep a checkpoint every 50 updates


@dataclass(frozen=True)
class Pretraining:
    """A size's pretraining run: [(updates, validation loss on the mix, checkpoint)] every PRETRAIN_EVERY
    updates and at the end."""
    size: str
    checkpoints: tuple

    def matched(self, loss: float) -> tuple:
        """The first checkpoint whose validation loss is at or below `loss` (the last one if none is): a backbone
        pretrained as well as another size, not for as many updates."""
        return next((c for c in self.checkpoints if c[1] <= loss), self.checkpoints[-1])


@functools.lru_cache(maxsize=None)
def pretraining(quick: bool, size: str, until: Optional[float] = None) -> Pretraining:
    """Pretrain the `size` backbone on the synthetic pretraining mix (configs/demo/pretrain.yaml with the size's
    overrides), validating and keeping a checkpoint (without optimizer state) every PRETRAIN_EVERY updates; made
    once and cached with its recipe under $DEMO_RUNS/pretrain_<size>. With `until`, the run stops at the first
    kept checkpoint whose validation loss is at or below it (enough for Pretraining.matched(until)), unless a
    whole run of the size is already there."""
    _demo(quick, "DEMO_DATA_ONLY", quiet=True)  # the synthetic data
    every = 2 if quick else PRETRAIN_EVERY
    overrides = SIZES[size].overrides() + (["train.max-update=4", "train.log-interval=1"] if quick else []) + [
        "train.disable-validation=false", f"train.validate-interval-updates={every}",
        "train.validate-interval=1000000", f"train.save-interval-updates={every}", "train.keep-interval-updates=-1",
        "train.no-save-optimizer-state=true", JSON_LOG]
    with open(os.path.join(REPO, "configs", "demo", "common.yaml"), "rb") as a, open(PRETRAIN_CONFIG, "rb") as b:
        recipe = hashlib.sha1(a.read() + b.read() + " ".join(overrides).encode()).hexdigest()[:12]
    save = os.path.join(os.environ["DEMO_RUNS"], f"pretrain_{size}")
    if until is not None and read_text(os.path.join(save, "recipe")) != recipe:
        save, recipe = f"{save}_until{until:.4f}", f"{recipe} until {until:.4f}"
    if read_text(os.path.join(save, "recipe")) != recipe:
        shutil.rmtree(save, ignore_errors=True)
        os.makedirs(save)
        log(f"pretraining the {size} backbone on the pretraining mix ({save}.log)" +
            ("" if until is None else f" until a validation loss of {until:.4f}"))
        start = time.time()
        cmd = build_command(PRETRAIN_CONFIG, [*overrides, f"train.save-dir={save}"])
        with open(save + ".log", "w") as out:
            p = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
            while p.poll() is None:
                time.sleep(2)
                if until is not None and any(c[1] <= until for c in _kept(save)):
                    p.kill()  # the matched checkpoint is saved: the rest of the run is not needed
                    p.wait()
                    break
            else:
                if p.returncode:
                    raise RuntimeError(f"pretraining failed ({save}.log):\n{' '.join(cmd)}\n"
                                       f"{(read_text(save + '.log') or '')[-3000:]}")
        with open(os.path.join(save, "recipe"), "w") as f:
            f.write(recipe)
        log(f"  {size} backbone pretrained in {time.time() - start:.0f} s")
    points = _kept(save)
    if not points:
        raise RuntimeError(f"{save}.log: no validation losses of kept checkpoints")
    return Pretraining(size, tuple(points))


def _kept(save: str):
    """[(updates, validation loss, checkpoint)] of a pretraining run: its validations' checkpoints on disk."""
    return validated_checkpoints(read_text(save + ".log") or "", save)


def read_text(path) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def task_overrides(task: str):
    t = TASKS[task]
    data = f"$DEMO_DATA/downstream_{t['file']}"
    return [f"task={t['task']}", f"data={data}_train.tsv,{data}_valid.tsv", f"test_data={data}_test.tsv",
            f"task_options.selected-cols={t['cols']}", f"generate.scoring={t['scoring']}", *t["extra"]]


def run_logged(cmd, log_path, env=None):
    with open(log_path, "w") as f:
        p = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    with open(log_path) as f:
        text = f.read()
    if p.returncode:
        raise RuntimeError(f"command failed ({log_path}):\n{' '.join(cmd)}\n{text[-3000:]}")
    return text


def validation(task: str, every: int, keep_every_checkpoint: bool = False):
    """fairseq-train options for OFA's validation by greedy generation every `every` updates, keeping
    checkpoint_best.pt by the task's score and only the newest interval checkpoint, or with
    `keep_every_checkpoint` all of them (without optimizer state, to spare the disk). fairseq writes a
    validation that falls on an epoch's end to the epoch checkpoint, not to an interval one, so that mode
    keeps the epoch checkpoints too."""
    metric = "cider" if task == "caption" else "score"
    keep = ["train.keep-interval-updates=-1", "train.no-epoch-checkpoints=false",
            "train.no-save-optimizer-state=true"] if keep_every_checkpoint else ["train.keep-interval-updates=1"]
    return ["train.disable-validation=false", f"train.eval-{'cider' if task == 'caption' else 'acc'}=true",
            "train.eval-args={beam: 1, max_len_b: 40}", f"train.validate-interval-updates={every}",
            "train.validate-interval=1000000", f"train.save-interval-updates={every}", *keep,
            f"train.best-checkpoint-metric={metric}", "train.maximize-best-checkpoint-metric=true"]


# ---------------------------------------------------------------------------------------------- the run store

@dataclass(frozen=True)
class Run:
    """One training run of a study and its test score: `task` tuned from the `size` backbone with `options`
    (fairseq overrides) for `updates` updates, validated every `every` updates (checkpoint_best.pt is the
    one scored on the test split). Runs of the same settings are shared by every study."""
    task: str
    label: str  # names the options, e.g. "prompt" or "prompt_init-vocab"
    options: tuple
    updates: int
    every: int
    seed: int = 1
    size: str = "micro"
    matched_loss: Optional[float] = None  # tune from the size's first checkpoint pretrained to this loss
    keep_every_checkpoint: bool = False  # the checkpoint of every validation, not only the best and newest

    @property
    def name(self) -> str:
        matched = "" if self.matched_loss is None else f"_matched{self.matched_loss:.4f}"
        kept = "_every-checkpoint" if self.keep_every_checkpoint else ""
        return f"{self.size}{matched}/{self.task}_{self.label}{kept}_u{self.updates}_s{self.seed}"

    def checkpoint_at(self, quick: bool, updates: int) -> str:
        """The checkpoint kept at `updates` of a run with keep_every_checkpoint."""
        save = os.path.join(store_dir(quick), self.name)
        with open(save + ".train.log") as f:
            path = kept_checkpoint(f.read(), save, updates)
        if path is None:
            raise FileNotFoundError(f"{self.name}: no checkpoint of update {updates} kept under {save}; only a run "
                                    "with keep_every_checkpoint keeps one per validation")
        return path

    def backbone(self, quick: bool) -> str:
        if self.matched_loss is None:
            return ensure_backbone(quick, self.size)
        return pretraining(quick, self.size, self.matched_loss).matched(self.matched_loss)[2]


def method_run(task: str, method: str, updates: int, every: int, seed: int = 1, size: str = "micro",
               matched_loss: Optional[float] = None) -> Run:
    """The run of one of METHODS as the method comparison makes it (the other studies reuse it)."""
    return Run(task, method, tuple(METHODS[method]), updates, every, seed, size, matched_loss)


def method_lr(method: str) -> float:
    """The learning rate METHODS gives `method`."""
    return float(next(o for o in METHODS[method] if o.startswith("train.lr=")).split("=", 1)[1])


def lr_run(task, method, lr, updates, every, seed, size="micro", matched_loss=None) -> Run:
    """`method` at learning rate `lr`: the method's own run (shared with the other studies) at its own rate."""
    if lr == method_lr(method):
        return method_run(task, method, updates, every, seed, size, matched_loss)
    options = [o for o in METHODS[method] if not o.startswith("train.lr=")] + [f"train.lr={lr:g}"]
    return Run(task, f"{method}_lr{lr:g}", tuple(options), updates, every, seed, size, matched_loss)


def store_dir(quick: bool) -> str:
    """Where runs are kept: $STUDY_RUNS, or .cache/study-runs (quick: study-runs-quick)."""
    return os.environ.get("STUDY_RUNS") or os.path.join(REPO, ".cache", "study-runs-quick" if quick else "study-runs")


def run_commands(run: Run, quick: bool, backbone: str):
    save = os.path.join(store_dir(quick), run.name)
    train = build_command(BASE_CONFIG, [
        *task_overrides(run.task), *SIZES[run.size].overrides(), f"restore_file={backbone}", *run.options,
        *validation(run.task, run.every, run.keep_every_checkpoint), f"train.seed={run.seed}", f"train.save-dir={save}",
        f"train.max-update={run.updates}", f"train.total-num-update={max(run.updates, 1)}",
        f"train.warmup-updates={min(50, max(run.updates // 4, 1))}", "train.log-interval=10", JSON_LOG])
    generate = build_command(BASE_CONFIG, [*task_overrides(run.task), *SIZES[run.size].overrides()],
                             checkpoint=os.path.join(save, "checkpoint_best.pt"))
    return save, train, generate


SOURCES = ("ofa_prompt", "experiments")
# claims.py reads the studies' results.json and makes no run: editing its table leaves every stored run valid
NOT_RUN_CODE = (os.path.join("experiments", "claims.py"),)


@functools.lru_cache(maxsize=None)
def source_digest(root: str = REPO) -> str:
    """sha1 of the Python source under ofa_prompt/ and experiments/ (paths and contents; not NOT_RUN_CODE): part
    of every stored run's key, so that a change of the code that trains or scores runs makes the store train them
    again, and the code version a study's results.json records."""
    digest = hashlib.sha1()
    for top in SOURCES:
        for folder, _, files in sorted(os.walk(os.path.join(root, top))):  # sorted: the same order everywhere
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                if os.path.relpath(path, root) in NOT_RUN_CODE:
                    continue
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read() + b"\0")
    return digest.hexdigest()


def run_key(train: List[str], generate: List[str], backbone: str) -> str:
    """What a stored run must match to be reused: its commands, its backbone file and the source code."""
    return hashlib.sha1(json.dumps([train, generate, os.path.getmtime(backbone), source_digest()]).encode()).hexdigest()


def execute(run: Run, quick: bool, threads: Optional[int] = None) -> dict:
    """Train and score `run`, or return its stored result when the same commands (and the same backbone
    file) ran before with the same source code (source_digest). The result: test score, validation curve, updates
    per epoch, parameter counts, seconds of training, checkpoint."""
    backbone = run.backbone(quick)
    save, train, generate = run_commands(run, quick, backbone)
    key = run_key(train, generate, backbone)
    done = save + ".json"
    if os.path.isfile(done):
        with open(done) as f:
            stored = json.load(f)
        if stored.get("key") == key and os.path.isfile(stored["checkpoint"]):
            return {**stored, "stored": True}
    # a fresh run: fairseq-train would resume from an earlier run's checkpoint_last.pt (made maybe with
    # another backbone) and, once that reached --max-update, report its old result as new
    shutil.rmtree(save, ignore_errors=True)
    os.makedirs(save)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    start = time.time()
    text = run_logged(train, save + ".train.log", env)
    seconds = time.time() - start
    curve, per_epoch = validation_curve(text)
    n, total = trainable(text)
    score = test_score(run_logged(generate, save + ".generate.log", env), TASKS[run.task]["metric"])
    result = dict(key=key, name=run.name, score=score, curve=curve, per_epoch=per_epoch, trained=n, total=total,
                  seconds=seconds, checkpoint=os.path.join(save, "checkpoint_best.pt"))
    with open(done, "w") as f:
        json.dump(result, f)
    return {**result, "stored": False}


def execute_all(runs: Sequence[Run], quick: bool, workers: int = 1) -> Dict[Run, dict]:
    """Every run (stored ones are read back), `workers` at a time, each on cores / workers threads; one
    progress line per finished run."""
    runs = list(dict.fromkeys(runs))
    for run in runs:  # pretrain before the pool: once, not once per worker
        run.backbone(quick)
    threads = max(1, (os.cpu_count() or 1) // workers)
    results, start = {}, time.time()

    def one(run):
        result = execute(run, quick, threads)
        results[run] = result
        elapsed = time.time() - start
        how = "stored run" if result["stored"] else f"trained in {result['seconds']:.0f} s"
        log(f"[{len(results)}/{len(runs)}] {run.name}: {TASKS[run.task]['metric']} {result['score']:.4f} "
            f"({how}; {elapsed / 60:.1f} min so far)")

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(one, r) for r in runs]:
            future.result()
    return {r: results[r] for r in runs}  # in the runs' order, not the order they finished in


# -------------------------------------------------------------------------------------------------- statistics

def mean_std(values: Sequence[float]):
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    if not values or any(math.isnan(v) for v in values):
        raise ValueError(f"mean_std needs numbers, got {values}")
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def pm(values: Sequence[float], digits: int = 4) -> str:
    """'mean ± std' of the values, the value alone when there is one, '-' when there are none."""
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def welch(a: Sequence[float], b: Sequence[float]):
    """Welch's t statistic of mean(a) - mean(b) and its Welch-Satterthwaite degrees of freedom. Two samples
    without any spread give t = +-inf (or 0 where the means are equal) with the pooled df."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's t-test needs at least two values per group, got {len(a)} and {len(b)}")
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    va, vb = sa * sa / len(a), sb * sb / len(b)
    if va + vb == 0:
        return (0.0 if ma == mb else math.copysign(math.inf, ma - mb)), float(len(a) + len(b) - 2)
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    return (ma - mb) / math.sqrt(va + vb), df


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz's method)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0 <= x <= 1):
        raise ValueError(f"incomplete_beta needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):  # where the fraction converges fast; else by the symmetry I_x(a, b) = 1 - I_1-x(b, a)
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (df > 0, not necessarily whole)."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def welch_test(a: Sequence[float], b: Sequence[float]):
    """(t, df, two-sided p) of Welch's t-test of a against b."""
    t, df = welch(a, b)
    return t, df, 2.0 * t_cdf(-abs(t), df)


ALPHA = 0.05


def verdict(a: Sequence[float], b: Sequence[float], names=("higher", "lower")) -> str:
    """Welch's t-test at ALPHA written out: 'higher'/'lower' (a against b) or 'no significant difference', with
    t, df and p; not tested where a group has a single value."""
    if len(a) < 2 or len(b) < 2:
        return "not tested (one seed)"
    t, df, p = welch_test(a, b)
    word = "no significant difference" if p >= ALPHA else names[0] if t > 0 else names[1]
    return f"{word} (t={t:.2f}, df={df:.1f}, p{'<0.001' if p < 0.001 else f'={p:.3f}'})"


def shares_of_finetuning(scores: Sequence[float], finetunes: Sequence[float], baseline: float) -> List[float]:
    """share_of_finetuning seed by seed (scores and finetunes of the same seeds), leaving out the seeds where
    finetuning scored exactly the baseline (a few updates in --quick runs): there the share has no meaning."""
    if len(scores) != len(finetunes):
        raise ValueError(f"{len(scores)} scores against {len(finetunes)} finetuning scores: one per seed each")
    return [share_of_finetuning(m, baseline, f) for m, f in zip(scores, finetunes) if f != baseline]


def share_of_finetuning(score: float, baseline: float, finetune: float) -> float:
    """How far a method gets from the task's trivial baseline towards finetuning: (score - baseline) /
    (finetune - baseline); 0 is the baseline, 1 finetuning."""
    if finetune == baseline:
        raise ValueError(f"finetuning scored the trivial baseline's {baseline}: no share of it can be measured")
    return (score - baseline) / (finetune - baseline)


def relative_drop(clean: float, attacked_score: float) -> float:
    """The share of the clean score an attack takes away (negative when the attack helped)."""
    if clean <= 0:
        raise ValueError(f"a relative drop needs a positive clean score, got {clean}")
    return (clean - attacked_score) / clean


def first_reaching(curve, target: float):
    """The first (updates, score, seconds) point of a validation curve at or above `target`, or None."""
    return next((p for p in curve if p[1] >= target), None)


def best_point(curve):
    """The earliest point with the best validation score."""
    return max(curve, key=lambda p: (p[1], -p[0]))


def closest_point(curve, target: float):
    """The earliest point of a validation curve whose score is closest to `target`."""
    return min(curve, key=lambda p: (abs(p[1] - target), p[0]))


# ---------------------------------------------------------------------------------------------- tables, plots

def save_results(out: str, name: str, rows, header, note: str, command: str, extra: Optional[dict] = None):
    """results.md (table + how it was made), results.json (the table, `extra` (e.g. the per-seed values) and
    `code`: the source_digest of the code that made the runs; a table remade from its results.json keeps the
    one stored there, None when the runs predate the record)."""
    os.makedirs(out, exist_ok=True)
    code = source_digest()
    if "remade from its results.json" in command:
        code = json.loads(read_text(os.path.join(out, "results.json")) or "{}").get("code")
    lines = [f"# {name}", "", note, "", f"Made with `{command}`.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"header": header, "rows": rows, **(extra or {}), "code": code}, f, indent=1)
    print("\n".join(lines[6:]))


@dataclass
class Series:
    """One line (or bar group) of a plot: the mean of each point's values, with a standard-deviation bar
    when a point has several (seeds)."""
    xs: list
    values: List[List[float]] = field(default_factory=list)

    def means(self):  # a point without values (e.g. no seed reached a target) is not drawn
        return [mean_std(v)[0] if v else math.nan for v in self.values]

    def errors(self):
        return [mean_std(v)[1] if v else math.nan for v in self.values]


def _short(n: float) -> str:
    """4190344 -> '4.2M': tick labels of parameter counts that do not run into each other."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def plot(path, title, series: Dict[str, Series], xlabel, ylabel, kind="line", xticks=None, logx=False, axes=None,
         baseline: Optional[float] = None):
    """Lines (or grouped bars over `xticks`) with error bars of one standard deviation over seeds, and the task's
    trivial `baseline` as a dashed line. On a log x axis the ticks are the data's own x values, labelled short
    (the default minor labels of a narrow log range overlap). The legend sits beside the plot, off the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    own = axes is None
    if own:
        fig, axes = plt.subplots(figsize=(8, 4))
    ax = axes
    if kind == "bar":
        width = 0.8 / max(len(series), 1)
        for i, (label, s) in enumerate(series.items()):
            ax.bar([x + i * width for x in range(len(s.values))], s.means(), width, yerr=s.errors(), capsize=3,
                   label=label)
        # slanted: the labels of several settings ("encoder only", "bottom layer", ...) would run into each other
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(xticks))], xticks,
                      **(dict(rotation=25, ha="right") if len(xticks) > 2 else {}))
    else:
        for label, s in series.items():
            ax.errorbar(s.xs, s.means(), yerr=s.errors(), marker="o", capsize=3, label=label)
        if logx:
            ax.set_xscale("log")
            xs = sorted({x for s in series.values() for x in s.xs})
            ax.xaxis.set_major_locator(FixedLocator(xs))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FixedFormatter([_short(x) for x in xs]))
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", linewidth=1, label="trivial baseline", zorder=3)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    if own:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def plot_grid(path, panels):
    """Several plots side by side: panels is a list of plot() keyword dicts (without path)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(8 * cols, 4 * rows), squeeze=False)  # room for the legends
    for ax, panel in zip(grid.flat, panels):
        plot(None, axes=ax, **panel)
    for ax in list(grid.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cli(description, updates=200, every=25):
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="a few updates on the quick demo data (for tests)")
    ap.add_argument("--out", help="output folder (default docs/<study>, quick: .cache/experiments/<study>)")
    ap.add_argument("--updates", type=int, help=f"training updates per run (default {updates}, quick 3)")
    ap.add_argument("--every", type=int, help=f"validate every N updates (default {every}, quick 1)")
    ap.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 1 2 3, quick 1)")
    ap.add_argument("--workers", type=int, default=2, help="runs at a time, sharing the cores (default 2)")
    return ap


def settings(a, study: str, updates=200, every=25):
    """(updates, every, seeds, out) of the parsed command line, with the quick defaults."""
    return (a.updates or (3 if a.quick else updates), a.every or (1 if a.quick else every),
            a.seeds or ([1] if a.quick else [1, 2, 3]),
            a.out or os.path.join(REPO, f".cache/experiments/{study}" if a.quick else f"docs/{study}"))


def command_line(script: str, argv) -> str:
    return f"python experiments/{script} " + " ".join(argv if argv is not None else sys.argv[1:])


def original_args(ap, out: str, extra: Sequence[str]):
    """The parsed arguments of the command that made the study in folder `out` (its results.md says which), with
    `extra` after them: tables and notes remade with --from-results keep the settings the runs had."""
    first = remade_command_line(out, "-", []).split("`")[0]
    return ap.parse_args([*shlex.split(first)[2:], *extra])


def remade_command_line(out: str, script: str, argv) -> str:
    """The command that made a study's runs (from its results.md), then the one that remade its table and plots
    from results.json: what save_results writes as "Made with `...`"."""
    made = re.search(r"^Made with `(.*)`\.$", read_text(os.path.join(out, "results.md")) or "", re.M)
    if made is None:
        raise ValueError(f"{out}/results.md does not say which command made it")
    first = made.group(1).split("`; table and plots remade")[0]
    return f"{first}`; table and plots remade from its results.json with `{command_line(script, argv)}"
