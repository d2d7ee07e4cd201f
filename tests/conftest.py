import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fairseq.data import Dictionary

import ofa_prompt
import warm_start
from ofa_prompt.models.ofa import OFAModel

ofa_prompt.load()  # the plugin: fairseq's behaviour changed, models, criteria and tasks registered

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("OFA_REFERENCE_DIR", REPO.parent / "shared" / "ofa_reference"))
BPE = Path(os.environ.get("OFA_BPE_DIR", REPO.parent / "shared" / "ofa_bpe"))  # OFA's utils/BPE files

MICRO = dict(
    arch="ofa_prompt_tiny", encoder_layers=2, decoder_layers=2, encoder_embed_dim=64, decoder_embed_dim=64,
    encoder_ffn_embed_dim=128, decoder_ffn_embed_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
    resnet_type="resnet18", dropout=0.0,
)


def micro_args(**overrides):
    from fairseq.models import ARCH_CONFIG_REGISTRY

    args = argparse.Namespace(**{**MICRO, **overrides})
    ARCH_CONFIG_REGISTRY[args.arch](args)
    return args


def micro_dictionary(size=300):
    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


def build_micro(dictionary=None, **overrides):
    d = dictionary or micro_dictionary()
    return OFAModel.build_model(micro_args(**overrides), SimpleNamespace(source_dictionary=d, target_dictionary=d))


def micro_batch(model, bsz=3, src_len=6, tgt_len=5, image=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(model.encoder.dictionary)
    src = torch.randint(4, n, (bsz, src_len), generator=g)
    src[:, 0] = 0
    src[-1, -2:] = 1  # right padding in the last sample
    prev = torch.randint(4, n, (bsz, tgt_len), generator=g)
    prev[:, 0] = 0
    return dict(
        src_tokens=src, src_lengths=src.ne(1).sum(1), prev_output_tokens=prev,
        patch_images=torch.rand(bsz, 3, image, image, generator=g) * 2 - 1,
        patch_masks=torch.tensor([True] * (bsz - 1) + [False]),
    )


# --- fairseq's entry points for the end-to-end tests: warm start-ups (see tests/warm_start.py) ----------
REAL_BIN = f"{sys.prefix}/bin"  # the installed fairseq-train / fairseq-generate
_WARM = Path(tempfile.mkdtemp(prefix="ofa_prompt_warm_"))
BIN = str(_WARM / "bin")  # shims of the same names: forked from the warm interpreter while it runs
warm_start.write_shims(BIN, str(_WARM / "socket"), REAL_BIN)
os.environ["PATH"] = BIN + os.pathsep + os.environ["PATH"]  # the scripts' and experiments' runs too


def cold(cmd):
    """`cmd` with the installed entry point: for the tests that signal a run by its pid, or read its pid."""
    return [os.path.join(REAL_BIN, os.path.basename(cmd[0])), *cmd[1:]]


@pytest.fixture(scope="session", autouse=True)
def warm_interpreter(request):
    """The warm interpreter, when end-to-end tests were selected (OFA_PROMPT_COLD_START=1: none)."""
    wanted = os.environ.get("OFA_PROMPT_COLD_START") != "1" and any(
        item.get_closest_marker("slow") for item in request.session.items)
    server = warm_start.start_server(str(_WARM / "socket")) if wanted else None
    yield server
    if server is not None:
        server.kill()
        server.wait()
    shutil.rmtree(_WARM, ignore_errors=True)


@pytest.fixture(scope="session")
def reference():
    if not (REFERENCE / "README.md").is_file():
        pytest.skip(f"OFA reference fixtures not found at {REFERENCE} (set OFA_REFERENCE_DIR)")
    return REFERENCE


# --- the tasks over tiny TSVs: fairseq-train / fairseq-generate command lines and task objects ---------
TASKS = ["caption", "vqa_gen", "refcoco", "snli_ve"]


def as_options(values: dict) -> list:
    """{"encoder_layers": 2, ...} as command-line options ["--encoder-layers", "2", ...]."""
    return [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))]


MICRO_SIZES = {k: v for k, v in MICRO.items() if k not in ("arch", "dropout")}  # for another --arch
MICRO_CLI = as_options({k: v for k, v in MICRO.items() if k != "dropout"})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A folder of tiny TSVs, <task>_train.tsv (12 rows) and <task>_test.tsv (6 rows), with the word
    dictionary and answers.json."""
    import tiny_data

    folder = tmp_path_factory.mktemp("tiny")
    tiny_data.write_dict(folder)
    for task in TASKS:
        tiny_data.write(folder / f"{task}_train.tsv", tiny_data.rows(task, 12, seed=1))
        tiny_data.write(folder / f"{task}_test.tsv", tiny_data.rows(task, 6, seed=2))
    return folder


def common(task, data, answers=True):
    """The task options of a command line over the `data` folder (vqa_gen: with its answer set, unless
    `answers` is false)."""
    extra = ["--ans2label-file", f"{data}/answers.json"] if task == "vqa_gen" and answers else []
    return ["--user-dir", str(REPO / "ofa_prompt"), "--task", task, "--bpe-dir", str(data), "--text-tokenizer", "word",
            "--patch-image-size", "64", "--max-image-size", "64", "--num-bins", "100", *extra]


def reference_caption_args(reference):
    """The task options of a caption command line over the reference fixtures' word dictionary."""
    return ["--user-dir", str(REPO / "ofa_prompt"), "--task", "caption", "--bpe-dir", str(reference),
            "--text-tokenizer", "word", "--patch-image-size", "64"]


def run(cmd, timeout=300, **kwargs):
    """A command that must succeed; its stdout and stderr together."""
    import subprocess

    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


def setup_task(task, data, *extra, split="train"):
    """Task `task` as fairseq-train sets it up from a command line over the `data` folder (with `extra`
    options), its training set loaded."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        f"{data}/{task}_{split}.tsv,{data}/{task}_test.tsv", *common(task, data), *extra, *MICRO_CLI])
    t = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    t.load_dataset("train")
    return t


def make_task(name, data, train_rows=None, **options):
    """Task `name` over the tiny TSVs of `data` (or `train_rows` as its training file), with `options`
    (vqa_gen: the answer set unless given, None for none), its training set loaded."""
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY

    import tiny_data

    train = data / f"{name}_train.tsv"
    if train_rows is not None:
        train = data / f"{name}_custom.tsv"
        tiny_data.write(train, train_rows)
    if name == "vqa_gen":
        options.setdefault("ans2label_file", str(data / "answers.json"))
    cfg = TASK_DATACLASS_REGISTRY[name](data=f"{train},{data}/{name}_test.tsv", bpe_dir=str(data),
                                        text_tokenizer="word", patch_image_size=64, max_image_size=64, num_bins=100,
                                        code_dict_size=0, **options)
    task = TASK_REGISTRY[name].setup_task(cfg)
    task.load_dataset("train")
    return task


def first(task, n=1):
    """The first training sample of `task`, or a batch of the first `n`."""
    ds = task.datasets["train"]
    return ds[0] if n == 1 else ds.collater([ds[i] for i in range(n)])


class NoLoss:
    """A criterion stand-in for valid_step: validation's scoring is what such tests look at."""

    def __call__(self, model, sample):
        return torch.tensor(0.0), 1, {"ntokens": 1, "nsentences": 1, "sample_size": 1}

    @staticmethod
    def reduce_metrics(logging_outputs):
        pass


def drive(scorer, items):
    """A scorer fed like fairseq-generate does: the task records a batch of (sample_id, references, meta, _),
    then one add_string per sample's hypothesis; returns the metric line."""
    from ofa_prompt.metrics.records import RECORDER

    RECORDER.clear()
    for sample_id, refs, meta, _ in items:
        RECORDER.push(sample_id, refs, meta)
    for _, _, _, hyp in items:
        scorer.add_string("target text is ignored", hyp)
    return scorer.result_string()
