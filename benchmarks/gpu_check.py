"""The checks and measurements of benchmarks/gpu_check.sh, on a GPU (default) or, at micro sizes, on the CPU.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--out DIR]

1. fixtures: the official OFA reference checkpoints (../shared/ofa_reference) give the official logits on the
   device: fp32 to 1e-4 (TF32 off), fp16 (the model in half, as fairseq's --fp16) and bf16 (--autocast bf16)
   within a share of the largest reference logit (TOLERANCE).
2. training: prompt tuning (prompt length 64) through stock fairseq-train from a random-weight backbone written
   here, once with --fp16 (OFA's flags; on the CPU in fp32) and once with --autocast bf16: every logged loss
   finite, the backbone in the last checkpoint bit-identical to the one it started from, the prompts changed
   between the checkpoints of updates 10 and 20.
3. beam search: stock fairseq-generate (beam 5, prompts, --no-repeat-ngram-size 3) on the device and on the
   CPU, both fp32 (TF32 off): the same hypotheses.
4. speed: training samples per second (median step after the first epoch) and peak memory for finetuning,
   prompt tuning and prompt tuning with --image-feature-cache, and beam search samples per second, for each
   size (ofa_base and ofa_large at 480 px on a GPU; a micro model at 64 px on the CPU).

Every fairseq run goes through `python gpu_check.py fairseq-train|fairseq-generate ARGS`: fairseq's own entry
point (cli_main) in this process, with its training steps timed and its peak memory written to the JSON file
named by $GPU_CHECK_STATS. A markdown summary ends the output (and goes to DIR/summary.md); the exit status is
1 if a check failed.
"""
import argparse
import atexit
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # tiny_data: the tests' TSV rows
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import status_mb  # noqa: E402

PACK = REPO / ".gpu_check"  # what `gpu_check.sh --download` prepares: wheels/ and a copy of ../shared
NAMES = ["plain", "prompt", "prompt_proj"]  # the reference checkpoints
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}  # fp32: absolute; fp16/bf16: times the largest |logit|
EPOCH = 3  # updates an epoch: the speed is measured after the first (--image-feature-cache fills it)
PROMPT = ["--encoder-prompt", "--decoder-prompt", "--encoder-prompt-length=64", "--decoder-prompt-length=64"]
OFA_FP16 = ["--fp16", "--fp16-scale-window=512"]  # scripts/ofa/common.sh's DEVICE_ARGS, as OFA's scripts
MICRO = ["--encoder-layers=2", "--decoder-layers=2", "--encoder-embed-dim=64", "--decoder-embed-dim=64",
         "--encoder-ffn-embed-dim=128", "--decoder-ffn-embed-dim=128", "--encoder-attention-heads=4",
         "--decoder-attention-heads=4", "--resnet-type=resnet18"]


@dataclass(frozen=True)
class Profile:
    """What one device runs: model sizes (name -> architecture options), image size, batch and run lengths."""
    device: str
    sizes: Dict[str, List[str]]
    image: int
    batch: int  # training batch (the training TSV has EPOCH batches)
    updates: int  # of the precision runs (checkpoints at updates//2 and updates: not multiples of EPOCH)
    speed_updates: int
    beam_rows: int  # rows of the device's beam-search run (its first `compare_rows` also go to the CPU)
    compare_rows: int
    precisions: Dict[str, List[str]] = field(default_factory=dict)  # name -> fairseq-train options


PROFILES = {
    "cuda": Profile("cuda", {"ofa_base": ["--arch=ofa_prompt_base"], "ofa_large": ["--arch=ofa_prompt_large"]},
                    image=480, batch=8, updates=20, speed_updates=9, beam_rows=32, compare_rows=4,
                    precisions={"fp16": OFA_FP16, "bf16": ["--autocast=bf16"]}),
    "cpu": Profile("cpu", {"micro": ["--arch=ofa_prompt_tiny", *MICRO]}, image=64, batch=1, updates=4,
                   speed_updates=5, beam_rows=2, compare_rows=2,
                   precisions={"fp32": ["--cpu"], "bf16": ["--cpu", "--autocast=bf16"]}),
}


def shared_dir(name: str, variable: str) -> Path:
    """../shared/<name> (or $variable), else the copy `gpu_check.sh --download` put in .gpu_check/shared."""
    if os.environ.get(variable):
        return Path(os.environ[variable])
    for folder in (REPO.parent / "shared" / name, PACK / "shared" / name):
        if folder.is_dir():
            return folder
    raise SystemExit(f"gpu_check: {name} not found in ../shared or .gpu_check/shared: run `bash "
                     f"benchmarks/gpu_check.sh --download` where ../shared exists, or set {variable}")


def no_tf32():
    """float32 matrix products and convolutions in float32 (cuDNN's convolutions default to TF32)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


# --- 1. the reference fixtures on the device -------------------------------------------------------------
def fixture_errors(device: str) -> Dict[str, float]:
    """The largest logit error of the three reference checkpoints on `device`: fp32 absolute, fp16 and bf16 as
    a share of the largest reference logit."""
    import torch

    from ofa_prompt import load_model

    no_tf32()
    reference = shared_dir("ofa_reference", "OFA_REFERENCE_DIR")
    errors = {p: 0.0 for p in TOLERANCE}
    for name in NAMES:
        io = torch.load(reference / f"io_{name}.pt")
        expected = io["outputs"]["logits"]
        scale = expected.abs().max().item()
        for precision in TOLERANCE:
            model = load_model(str(reference / f"{name}.pt"), {"bpe_dir": str(reference)}).to(device)
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in io["inputs"].items()}
            if precision == "fp16":  # as fairseq's --fp16: the model and the images in half
                model.half()
                inputs["patch_images"] = inputs["patch_images"].half()
            model.cfg.autocast = "bf16" if precision == "bf16" else "none"
            with torch.no_grad():
                logits = model(**inputs)[0].float().cpu()
            error = (logits - expected).abs().max().item()
            errors[precision] = max(errors[precision], error if precision == "fp32" else error / scale)
    return errors


# --- data and the random-weight backbone -----------------------------------------------------------------
def write_backbone(path: Path, arch_options: List[str], bpe_dir: Path, seed: int = 0) -> int:
    """A prompt-less OFA of `arch_options` with random weights over OFA's vocabulary (GPT-2 BPE + 8192 image
    codes + 1000 bins), saved as fairseq-train saves one, in fp16 as OFA's releases; its parameter count."""
    import torch
    from fairseq import options

    import ofa_prompt
    from ofa_prompt.data.dictionary import build_ofa_dictionary
    from ofa_prompt.models.ofa import OFAModel

    ofa_prompt.load()  # registers the architectures

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["x", "--user-dir", str(REPO / "ofa_prompt"), "--task", "caption",
                                                *arch_options])
    dictionary = build_ofa_dictionary(str(bpe_dir / "dict.txt"), 8192, 1000)
    torch.manual_seed(seed)
    model = OFAModel.build_model(args, _Dictionaries(dictionary))
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model_cfg = {k: v for k, v in vars(args).items() if k in vars(model.cfg) or k == "arch"}
    history = [{"criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion", "optimizer_name": "Adam",
                "lr_scheduler_state": {"best": None}, "num_updates": 0}]  # what fairseq's loader reads
    torch.save({"args": None, "model": state, "extra_state": {}, "optimizer_history": history,
                "cfg": {"model": {**model_cfg, "_name": args.arch},
                        "task": {"_name": "caption", "num_bins": 1000, "code_dict_size": 8192}}}, path)
    return sum(p.numel() for p in model.parameters())


class _Dictionaries:
    def __init__(self, dictionary):
        self.source_dictionary = self.target_dictionary = dictionary


def write_captions(path: Path, rows: int, seed: int) -> Path:
    import tiny_data

    tiny_data.write(path, tiny_data.rows("caption", rows, seed=seed))
    return path


def task_options(bpe_dir: Path, image: int) -> List[str]:
    return ["--user-dir", str(REPO / "ofa_prompt"), "--task=caption", f"--bpe-dir={bpe_dir}", "--selected-cols=0,4,2",
            f"--patch-image-size={image}", f"--max-image-size={image}", "--num-bins=1000"]


def train_options(backbone: Path, save_dir: Path, batch: int, updates: int) -> List[str]:
    """OFA's caption training flags (scripts/ofa/train_caption_stage1.sh), a fixed number of updates, no
    validation."""
    return [f"--finetune-from-model={backbone}", f"--save-dir={save_dir}", f"--batch-size={batch}",
            f"--max-update={updates}", "--criterion=adjust_label_smoothed_cross_entropy", "--label-smoothing=0.1",
            "--optimizer=adam", "--adam-betas=(0.9,0.999)", "--clip-norm=1.0", "--lr-scheduler=polynomial_decay",
            f"--total-num-update={updates}", "--warmup-updates=0", "--max-src-length=80", "--max-tgt-length=20",
            "--disable-validation", "--num-workers=0", "--log-format=json", "--log-interval=1", "--seed=1"]


# --- fairseq runs, measured --------------------------------------------------------------------------------
@dataclass
class Run:
    log: str
    stats: dict


@dataclass(frozen=True)
class Places:
    """out: what comes back (summary.md, runs.log: every run's output, stats.jsonl: every run's measurements),
    few files as the GPU tool returns at most 8; work: data, backbones and checkpoints (GBs at ofa_large)."""
    out: Path
    work: Path


def fairseq(entry: str, args: List[str], places: Places, name: str, fp32: bool = False) -> Run:
    """`entry` (fairseq-train or fairseq-generate) with `args` in a fresh process through measured(); its
    output is appended to runs.log, its measurements to stats.jsonl. fp32: TF32 off (exact float32 on a GPU)."""
    stats = places.work / f"{name}.stats.json"
    env = {**os.environ, "GPU_CHECK_STATS": str(stats), "GPU_CHECK_FP32": "1" if fp32 else ""}
    cmd = [sys.executable, __file__, entry, *args]
    print("+", " ".join(cmd[2:]), flush=True)
    started = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log = p.stdout + p.stderr
    with open(places.out / "runs.log", "a") as f:
        f.write(f"===== {name}: {' '.join(cmd[2:])}\n{log}\n")
    if p.returncode != 0:
        raise SystemExit(f"gpu_check: {entry} failed ({name}; its output is in {places.out / 'runs.log'})\n"
                         f"{log[-3000:]}")
    run = Run(log, {**json.loads(stats.read_text()), "wall_s": round(time.time() - started, 1)})
    with open(places.out / "stats.jsonl", "a") as f:
        f.write(json.dumps({"run": name, **run.stats}) + "\n")
    print(f"  {name}: {run.stats['wall_s']:.0f} s", flush=True)
    return run


def measured(entry: str, argv: List[str]):
    """fairseq's `entry` in this process, every Trainer.train_step timed (synchronized on a GPU); at exit the
    step times and peak memory (RSS, and CUDA's allocator) go to $GPU_CHECK_STATS."""
    import torch

    if os.environ.get("GPU_CHECK_FP32"):
        no_tf32()
    from fairseq.trainer import Trainer

    steps = []
    step = Trainer.train_step

    def timed(self, *args, **kwargs):
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        started = time.perf_counter()
        result = step(self, *args, **kwargs)
        sync()
        steps.append(time.perf_counter() - started)
        return result

    Trainer.train_step = timed

    def report():
        cuda = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None
        with open(os.environ["GPU_CHECK_STATS"], "w") as f:
            json.dump({"step_s": steps, "peak_rss_mb": status_mb("VmHWM"), "peak_cuda_mb": cuda}, f)

    atexit.register(report)
    sys.argv = [entry, *argv]
    if entry == "fairseq-train":
        from fairseq_cli.train import cli_main
    else:
        from fairseq_cli.generate import cli_main
    cli_main()


def losses(log: str) -> List[float]:
    """The training losses fairseq-train logged (--log-format json, train_inner)."""
    out = []
    for line in log.splitlines():
        if "train_inner" in line and '"loss"' in line:
            out.append(float(json.loads(line[line.index("{"):])["loss"]))
    return out


def samples_per_s(run: Run, batch: int) -> float:
    """Training samples per second of the steps after the first epoch (median step time)."""
    return batch / statistics.median(run.stats["step_s"][EPOCH:])


def peak_mb(run: Run) -> float:
    return run.stats["peak_cuda_mb"] if run.stats["peak_cuda_mb"] is not None else run.stats["peak_rss_mb"]


# --- 2. precision runs -------------------------------------------------------------------------------------
def prompt_keys(state: dict) -> List[str]:
    return [k for k in state if "_prompt_encoder." in k]


def training_verdict(run: Run, backbone: Path, save_dir: Path, updates: int) -> str:
    """'' if the run's losses are finite, its backbone bit-identical to `backbone` and its prompts moved
    between the checkpoints of updates//2 and `updates`; else what went wrong."""
    import torch

    logged = losses(run.log)
    if not logged or not all(math.isfinite(x) for x in logged):
        return f"losses {logged}"
    start = torch.load(backbone, map_location="cpu", weights_only=False)["model"]
    middle, last = (torch.load(next(save_dir.glob(f"checkpoint_*_{n}.pt")), map_location="cpu",
                               weights_only=False)["model"] for n in (updates // 2, updates))
    changed = [k for k, v in start.items() if not torch.equal(last[k].float(), v.float())]
    if changed:
        return f"{len(changed)} backbone tensors changed, e.g. {changed[0]}"
    if not prompt_keys(last) or all(torch.equal(middle[k], last[k]) for k in prompt_keys(last)):
        return "prompts unchanged"
    return ""


# --- 3. beam search ----------------------------------------------------------------------------------------
def hypotheses(log: str) -> Dict[int, str]:
    """{sample id: hypothesis tokens} from fairseq-generate's H- lines."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^H-(\d+)\t\S+\t(.*)$", log, re.M)}


def generate_rate(log: str) -> float:
    """fairseq-generate's own sentences per second."""
    return float(re.search(r"Translated .* \(([\d.]+) sentences/s", log).group(1))


# --- the whole check ---------------------------------------------------------------------------------------
@dataclass
class Report:
    checks: List[tuple] = field(default_factory=list)  # (check, result, ok)
    speed: List[tuple] = field(default_factory=list)  # (size, what, samples/s, peak MiB)

    def check(self, name: str, problem: str, detail: str = ""):
        ok = not problem
        self.checks.append((name, detail if ok else problem, ok))
        print(f"gpu_check: {name}: {'ok' if ok else 'FAILED'} {detail if ok else problem}", flush=True)

    def markdown(self, device: str, profile: Profile) -> str:
        memory = "peak GPU memory (MiB)" if profile.device == "cuda" else "peak RSS (MiB)"
        lines = [f"GPU check on {device}", "", "| check | result | |", "|---|---|---|"]
        lines += [f"| {name} | {result} | {'ok' if ok else 'FAILED'} |" for name, result, ok in self.checks]
        lines += ["", f"| size | what | samples/s | {memory} |", "|---|---|---|---|"]
        lines += [f"| {size} | {what} | {rate:.2f} | {mem:,.0f} |" for size, what, rate, mem in self.speed]
        return "\n".join(lines)


def device_name(profile: Profile) -> str:
    import torch

    if profile.device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"CPU, {torch.get_num_threads()} threads (torch {torch.__version__}), micro sizes"


def check_size(report: Report, profile: Profile, size: str, places: Places, bpe: Path, first: bool):
    """Training at each precision (the first size only), the speed runs and beam search for one model size."""
    work = places.work / size
    work.mkdir(parents=True, exist_ok=True)
    backbone = work / "backbone.pt"
    params = write_backbone(backbone, profile.sizes[size], bpe)
    print(f"gpu_check: {size}: random-weight backbone of {params:,} parameters", flush=True)
    train_tsv = write_captions(work / "train.tsv", EPOCH * profile.batch, seed=1)
    task = task_options(bpe, profile.image)
    arch = profile.sizes[size]
    main = OFA_FP16 if profile.device == "cuda" else ["--cpu"]  # the precision of the speed runs
    speed = next(p for p, flags in profile.precisions.items() if flags == main)

    def train(name, options, updates=profile.speed_updates):
        return fairseq("fairseq-train", [str(train_tsv), *task, *arch, *options,
                                         *train_options(backbone, work / name, profile.batch, updates)],
                       places, f"{size}_{name}")

    runs = {}
    for precision, flags in profile.precisions.items():
        if first:  # checkpoints in the middle and at the end: the prompts move, the backbone stays
            updates = profile.updates
            runs[precision] = train(f"prompt_{precision}", [*PROMPT, *flags, "--lr=0.03", "--save-full-checkpoint",
                                                            f"--save-interval-updates={updates // 2}",
                                                            "--save-interval=1000000", "--no-epoch-checkpoints"],
                                    updates)
            report.check(f"{size} prompt tuning, {precision}, {updates} updates",
                         training_verdict(runs[precision], backbone, work / f"prompt_{precision}", updates),
                         "finite losses, backbone bit-identical, prompts changed")
        elif precision == speed:
            runs[precision] = train(f"prompt_{precision}", [*PROMPT, *flags, "--lr=0.03"])
    finetune = train("finetune", [*main, "--no-save", "--lr=1e-5"])
    cached = train("prompt_cached", [*PROMPT, *main, "--no-save", "--lr=0.03", "--image-feature-cache=memory",
                                     "--image-feature-cache-mb=4096"])
    label = "fp16" if profile.device == "cuda" else "fp32"
    for what, run in ((f"finetuning ({label})", finetune), (f"prompt tuning ({label})", runs[speed]),
                      (f"prompt tuning + --image-feature-cache ({label})", cached)):
        report.speed.append((size, what, samples_per_s(run, profile.batch), peak_mb(run)))
    tuned = work / f"prompt_{speed}" / "checkpoint_last.pt"
    beam(report, profile, size, work, places, tuned, task, first)


def beam(report: Report, profile: Profile, size: str, work: Path, places: Places, checkpoint: Path,
         task: List[str], compare: bool):
    """Beam search with the tuned prompts on the device (speed; fp32 TF32 off), and for `compare` the first rows
    again on the CPU: the same hypotheses."""
    options = [*task, f"--path={checkpoint}", "--beam=5", "--max-len-b=16", "--no-repeat-ngram-size=3",
               f"--batch-size={min(16, profile.beam_rows)}", "--gen-subset=test", "--num-workers=0", "--seed=7"]
    rows = write_captions(work / "test.tsv", profile.beam_rows, seed=2)
    device = [] if profile.device == "cuda" else ["--cpu"]
    run = fairseq("fairseq-generate", [str(rows), *options, *device], places, f"{size}_beam", fp32=True)
    report.speed.append((size, "beam search, beam 5, prompts (fp32)", generate_rate(run.log), peak_mb(run)))
    if not compare:
        return
    few = write_captions(work / "few.tsv", profile.compare_rows, seed=2)  # the first rows of test.tsv
    on_cpu = fairseq("fairseq-generate", [str(few), *options, "--cpu"], places, f"{size}_beam_cpu", fp32=True)
    ours, theirs = hypotheses(run.log), hypotheses(on_cpu.log)
    differ = [i for i in theirs if ours.get(i) != theirs[i]]
    problem = "no hypotheses" if not theirs else ""
    if differ:
        i = differ[0]
        problem = f"{len(differ)} of {len(theirs)} hypotheses differ, e.g. id {i}: {ours.get(i)!r} vs {theirs[i]!r}"
    report.check(f"{size} beam search with prompts and n-gram blocking, {profile.device} = cpu (fp32)", problem,
                 f"{len(theirs)} hypotheses equal")


def slim_wheel(path: str):
    """Rewrites the wheel at `path` without its Java parts (.jar files and METEOR's paraphrase data), which
    the plugin uses only where `java` is on the PATH; its RECORD loses their lines."""
    import zipfile

    def java(name):
        return name.endswith((".jar", ".gz")) or "/spice/lib/" in name

    with zipfile.ZipFile(path) as source:
        entries = {i.filename: source.read(i) for i in source.infolist() if not java(i.filename)}
    for name in [n for n in entries if n.endswith(".dist-info/RECORD")]:
        kept = [line for line in entries[name].decode().splitlines() if not java(line.split(",")[0])]
        entries[name] = ("\n".join(kept) + "\n").encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for name, data in entries.items():
            target.writestr(name, data)


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("fairseq-train", "fairseq-generate"):
        return measured(sys.argv[1], sys.argv[2:])
    if len(sys.argv) == 3 and sys.argv[1] == "slim-wheel":
        return slim_wheel(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=list(PROFILES), default="cuda")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "gpu_check_out"))
    a = ap.parse_args()
    profile, out = PROFILES[a.device], Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("runs.log", "stats.jsonl"):
        (out / name).unlink(missing_ok=True)
    places = Places(out, Path(tempfile.mkdtemp(prefix="gpu_check_")))
    started = time.time()
    report = Report()
    device = device_name(profile)
    print(f"gpu_check: {device}", flush=True)
    errors = fixture_errors(profile.device)
    for precision, error in errors.items():
        bound = TOLERANCE[precision]
        kind = "largest logit error" if precision == "fp32" else "largest logit error / largest logit"
        report.check(f"reference fixtures, {precision}", "" if error <= bound else f"{kind} {error:.2e} > {bound:g}",
                     f"{kind} {error:.2e} <= {bound:g}")
    bpe = shared_dir("ofa_bpe", "OFA_BPE_DIR")
    try:
        for i, size in enumerate(profile.sizes):
            check_size(report, profile, size, places, bpe, first=i == 0)
    finally:
        shutil.rmtree(places.work)
    summary = report.markdown(device, profile)
    (out / "summary.md").write_text(summary + "\n")
    failed = [name for name, _, ok in report.checks if not ok]
    print(f"\n{summary}\n\ngpu_check: {'all checks passed' if not failed else 'FAILED: ' + '; '.join(failed)} "
          f"({time.time() - started:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
