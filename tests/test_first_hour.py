"""The first hour with the plugin: natural mistakes get one line that says what to do, through the real commands
(scripts/train.sh and evaluate.sh, fairseq-train, fairseq-generate, the python -m tools), and start-up is quiet
and fast."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import tiny_data
from conftest import BIN, MICRO_SIZES, REPO, as_options, build_micro, cold, reference_caption_args as task_args
from ofa_prompt import yaml_config
from ofa_prompt.checkpoint import read_checkpoint

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="--fp16 is refused where torch finds no CUDA GPU")


def one_line_error(p: subprocess.CompletedProcess, *words: str) -> str:
    """The error line a failed command ended with, after checking it failed with that line and no traceback."""
    out = p.stdout + p.stderr
    assert p.returncode != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    line = (p.stderr.strip() or p.stdout.strip()).splitlines()[-1]  # evaluate.sh tees fairseq's stderr to stdout
    assert "error: " in line and all(w in line for w in words), line
    return line


# --- fast: the option names of scripts/train.sh and evaluate.sh ----------------------------------------
BASIC = "task: caption\ndata: a.tsv,b.tsv\narch: ofa_prompt_tiny\ntrain: {lr: 0.1, encoder-prompt: true}\n"


@pytest.mark.parametrize("override, message", [
    ("restore_fiel=x", "'restore-fiel' is not an option of fairseq's or of the plugin's; did you mean the top-level "
                       "key 'restore_file'?"),
    ("encoder-prompt-lenght=16", "did you mean 'encoder-prompt-length'?"),
    ("train.lrr=0.1", "did you mean 'lr'?"),
])
def test_misspelt_overrides_name_the_nearest_option(tmp_path, override, message):
    path = tmp_path / "c.yaml"
    path.write_text(BASIC)
    with pytest.raises(yaml_config.ConfigError) as info:
        yaml_config.build_command(str(path), [override])
    assert str(info.value).startswith(f"override {override!r}: ") and message in str(info.value)


def test_misspelt_options_in_a_configuration_and_for_generation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASIC + "generate: {bem: 5}\n")
    yaml_config.build_command(str(path))  # fairseq-train does not get the generate section
    with pytest.raises(yaml_config.ConfigError, match=r"c.yaml: generate: 'bem' .*did you mean 'beam'\?"):
        yaml_config.build_command(str(path), checkpoint="x.pt")
    # options of fairseq's own components and of the plugin pass
    path.write_text(BASIC)
    line = " ".join(yaml_config.build_command(str(path), ["lr-scheduler=polynomial_decay", "warmup-ratio=0.06",
                                                          "max-src-length=80", "adam-betas=(0.9,0.98)"]))
    assert "--warmup-ratio 0.06 --max-src-length 80 --adam-betas (0.9,0.98)" in line
    assert "--beam 3" in " ".join(yaml_config.build_command(str(path), ["beam=3"], checkpoint="x.pt"))


def test_the_fairseq_option_list_is_the_installed_fairseqs():
    listed = yaml_config._fairseq_options()
    assert listed == yaml_config.fairseq_option_names(), (
        "ofa_prompt/fairseq_options.txt is not the installed fairseq's: "
        "python -c 'from ofa_prompt.yaml_config import write_fairseq_options; write_fairseq_options()'")


def test_the_plugins_options_are_read_from_its_source():
    """Every option the plugin's registered tasks, models and criteria add, without importing them."""
    import argparse

    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.models import MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    parser = argparse.ArgumentParser(conflict_handler="resolve")
    for component in [*TASK_REGISTRY.values(), *MODEL_REGISTRY.values(), *CRITERION_REGISTRY.values()]:
        if component.__module__.startswith("ofa_prompt."):
            component.add_args(parser)
    live = {name[2:] for action in parser._actions for name in action.option_strings if name.startswith("--")}
    assert "encoder-prompt-length" in live and "warmup-ratio" in live
    assert live <= yaml_config.known_options(yaml_config.default_user_dir())


# --- fast: --fp16 where it cannot run ----------------------------------------------------------------------
def test_fp16_is_refused_without_cuda_and_in_generation_on_the_cpu():
    from omegaconf import OmegaConf

    from ofa_prompt.tasks.run_setup import check_precision
    from ofa_prompt.tasks.saved_settings import SettingsError

    cfg = OmegaConf.create({"common": {"fp16": True, "memory_efficient_fp16": False, "cpu": True}, "task": {"a": 1},
                            "common_eval": {"path": "checkpoint.pt"}})  # fairseq-generate
    with pytest.raises(SettingsError, match=r"--fp16 runs in half precision on a CUDA GPU, and fairseq-generate "
                                            r"with --cpu halves the model but not its inputs: .*fp16=false"):
        check_precision(cfg.task)
    cfg.common_eval.path = None
    check_precision(cfg.task)  # fairseq-train --fp16 --cpu: fairseq's mixed precision on the CPU (test_training.py)
    cfg.common_eval.path = "checkpoint.pt"
    cfg.common.cpu = False
    if torch.cuda.is_available():
        check_precision(cfg.task)  # a GPU: fairseq's fp16 as ever
    else:
        with pytest.raises(SettingsError, match="torch finds no CUDA GPU here"):
            check_precision(cfg.task)
    cfg.common.fp16, cfg.common.cpu = False, True
    check_precision(cfg.task)  # float32 on the CPU
    cfg.common.memory_efficient_fp16 = True
    with pytest.raises(SettingsError, match="--memory-efficient-fp16 .* with --cpu .*memory-efficient-fp16=false"):
        check_precision(cfg.task)


# --- fast: start-up ------------------------------------------------------------------------------------
def test_absent_biases_are_not_shared_parameters():
    """fairseq's Trainer ties (and logs) the parameters it finds shared: only the tied embeddings are."""
    import fairseq.trainer

    model = build_micro()
    assert model.encoder.embed_images.conv1.bias is None  # a bias=False convolution: None in _parameters
    shared = fairseq.trainer._catalog_shared_params(model)
    assert shared and all(len(paths) > 1 for paths in shared)
    assert all(p.endswith(("embed_tokens.weight", "output_projection.weight")) for paths in shared for p in paths)


@pytest.mark.parametrize("tool, args", [
    ("make_tsv", ["--help"]), ("make_tsv", ["caption"]),
    ("prompt_file", ["--help"]), ("prompt_file", ["export"]),
    ("predict", ["--help"]), ("predict", ["--beam", "2"]),
])
def test_tools_answer_help_and_argument_errors_at_once(tool, args):
    """--help and argument errors before torch and fairseq are imported (seconds), and no runpy warning."""
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-m", f"ofa_prompt.{tool}", *args], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    elapsed = time.monotonic() - start
    assert p.returncode == (0 if args == ["--help"] else 2), p.stderr
    assert ("usage: python -m ofa_prompt." + tool) in p.stdout + p.stderr
    assert "Warning" not in p.stderr, p.stderr
    assert elapsed < 5, f"{elapsed:.1f} s"


def test_the_python_api_registers_the_plugin_for_fairseq():
    """The Python API (ofa_prompt.load_model, ...) loads the plugin: its tasks are fairseq's, its API is there."""
    code = ("import ofa_prompt\nload_model = ofa_prompt.load_model\nfrom fairseq.tasks import TASK_REGISTRY\n"
            "from fairseq.models import ARCH_MODEL_REGISTRY\n"
            "print('caption' in TASK_REGISTRY, 'ofa_prompt_tiny' in ARCH_MODEL_REGISTRY, "
            "callable(load_model), ofa_prompt.from_pretrained.__name__)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["True", "True", "True", "from_pretrained"], p.stderr
    assert "Warning" not in p.stderr and "tensorboardX" not in p.stderr, p.stderr


# --- slow: through the real commands -------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data.reference_captions(tmp_path_factory.mktemp("firsthour") / "caption.tsv")


def train_args(data, reference, save_dir, *extra, entry=None):
    return [entry or f"{BIN}/fairseq-train", f"{data},{data}", *task_args(reference),
            "--arch", "ofa_prompt_base", *as_options(MICRO_SIZES),
            "--encoder-prompt", "--decoder-prompt", "--encoder-prompt-length", "8", "--decoder-prompt-length", "8",
            "--finetune-from-model", str(reference / "plain.pt"), "--batch-size", "4",
            "--criterion", "adjust_label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "0.03",
            "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1",
            "--disable-validation", "--seed", "3", "--save-dir", str(save_dir), *extra]


def generate_args(data, reference, *extra):
    return [f"{BIN}/fairseq-generate", str(data), *task_args(reference), "--path", str(reference / "prompt.pt"),
            "--gen-subset", "test", "--beam", "2", "--max-len-b", "5", "--batch-size", "4", "--scoring", "ofa_caption",
            *extra]


def config(tmp_path, data, reference, name="micro", **train) -> str:
    """A YAML configuration NAME.yaml of the micro run, with `train` options."""
    text = {"task": "caption", "data": f"{data},{data}", "test_data": str(data), "arch": "ofa_prompt_base",
            "restore_file": str(reference / "plain.pt"),
            "task_options": {"bpe-dir": str(reference), "text-tokenizer": "word", "patch-image-size": 64},
            "train": {**{k.replace("_", "-"): v for k, v in MICRO_SIZES.items()}, "encoder-prompt": True,
                      "optimizer": "adam", "lr": 0.03, "batch-size": 4, "max-update": 2, "num-workers": 0,
                      "save-dir": str(tmp_path / "run"), **train},
            "generate": {"gen-subset": "test", "beam": 2, "max-len-b": 5, "batch-size": 4, "scoring": "ofa_caption",
                         "fp16": True}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(text))  # JSON is YAML
    return str(path)


def command(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.slow
@NO_CUDA
def test_fp16_without_cuda_is_refused_before_training(data, reference, tmp_path):
    scripts = {"train.sh": ["bash", str(REPO / "scripts/train.sh"),
                            config(tmp_path, data, reference, "train", fp16=True)],
               "evaluate.sh": ["bash", str(REPO / "scripts/evaluate.sh"), config(tmp_path, data, reference),
                               str(reference / "prompt.pt")],
               "fairseq-train": train_args(data, reference, tmp_path / "plain", "--fp16", "--max-update", "2"),
               "fairseq-generate": generate_args(data, reference, "--fp16")}
    for name, cmd in scripts.items():
        p = command(cmd)
        one_line_error(p, "--fp16", "no CUDA GPU", "fp16=false", "--cpu", "--autocast bf16")
        assert "Loaded checkpoint" not in p.stderr and "num_updates" not in p.stderr, name  # before any of it


@pytest.mark.slow
def test_fp16_generation_on_the_cpu_is_refused_before_the_first_batch(data, reference):
    """fairseq-generate --fp16 --cpu halved the model and failed on the first batch (a FloatTensor input); fairseq-train
    --fp16 --cpu is fairseq's own mixed precision on the CPU and trains (test_training.py)."""
    p = command(generate_args(data, reference, "--fp16", "--cpu"))
    one_line_error(p, "--fp16", "fairseq-generate with --cpu halves the model", "fp16=false", "--autocast bf16")


@pytest.mark.slow
def test_a_wrong_bpe_dir_is_one_line(data, reference, tmp_path):
    p = command(train_args(data, reference, tmp_path, "--bpe-dir", str(tmp_path / "BPE"), "--max-update", "1"))
    one_line_error(p, f"--bpe-dir {tmp_path / 'BPE'}: no such folder", "dict.txt")
    p = command(generate_args(data, reference, "--bpe-dir", str(tmp_path)))
    one_line_error(p, f"--bpe-dir {tmp_path} has no dict.txt")


@pytest.mark.slow
def test_exporting_a_checkpoint_without_prompts_is_one_line(reference, tmp_path):
    p = command([sys.executable, "-m", "ofa_prompt.prompt_file", "export", str(reference / "plain.pt"),
                 str(tmp_path / "out.safetensors")])
    one_line_error(p, "plain.pt has no prompts to export")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.slow
def test_a_misspelt_override_is_refused_before_fairseq_starts(data, reference, tmp_path):
    path = config(tmp_path, data, reference)
    for override, nearest in (("restore_fiel=x", "restore_file"),
                              ("encoder-prompt-lenght=16", "encoder-prompt-length")):
        start = time.monotonic()
        p = command(["bash", str(REPO / "scripts/train.sh"), path, override])
        assert time.monotonic() - start < 5
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        one_line_error(p, override, "did you mean", nearest)
        assert "+ fairseq-train" not in p.stdout


def first_update(log: list) -> int:
    return next(i for i, line in enumerate(log) if re.search(r"train_inner .*num_updates=1\b", line))


@pytest.mark.slow
def test_ctrl_c_stops_after_the_update_with_a_checkpoint_and_start_up_is_quiet(data, reference, tmp_path):
    """Ctrl-C as SIGTERM: the update under way finishes, checkpoint_last.pt is saved, exit 0, and the same
    command resumes from it. The run's output before its first update is a screenful: no model printout, no
    warnings, no "shared parameter" lines for absent biases."""
    cmd = cold(train_args(data, reference, tmp_path / "run", "--max-update", "10", "--save-interval-updates", "100"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in proc.stdout:
        log.append(line)
        if re.search(r"train_inner .*num_updates=3\b", line):
            proc.send_signal(signal.SIGINT)
    assert proc.wait() == 0, "".join(log)[-3000:]
    assert any("Ctrl-C: stopping after the update under way, with a checkpoint (the same command resumes)" in line
               for line in log)
    saved = read_checkpoint(str(tmp_path / "run" / "checkpoint_last.pt"))["optimizer_history"][-1]["num_updates"]
    assert 3 <= saved < 10
    resumed = command(cmd)
    assert f"@ {saved} updates" in resumed.stdout + resumed.stderr  # the same command resumes

    start_up = "".join(log[:first_update(log)])
    # (fairseq's import, before the plugin's, still prints torch's deprecation of torch.jit.script: scripts/train.sh
    # silences it with PYTHONWARNINGS)
    assert "OFAModel(" not in start_up and "UserWarning" not in start_up and "hydra" not in start_up, start_up
    assert "detected shared parameter: encoder.embed_tokens.weight <- decoder.embed_tokens.weight" in start_up
    assert not re.search(r"detected shared parameter: .*\.bias", start_up), start_up
    assert "num. shared model params" in start_up and "tuning method prompt: 4096 of" in start_up
    assert len(log[:first_update(log)]) < 40, start_up


def test_a_second_ctrl_c_stops_at_once(monkeypatch):
    """The first Ctrl-C asks fairseq to stop after the update; the handler then gives SIGINT back to Python's
    default, so that a second one raises KeyboardInterrupt wherever training is."""
    from omegaconf import OmegaConf

    from ofa_prompt.fairseq_compat import patches

    cfg = OmegaConf.create({"optimization": {"stop_time_hours": 0.0}})
    installed = []
    monkeypatch.setattr(signal, "signal", lambda *a: installed.append(a))
    patches.stop_after_update_on_sigint(cfg)
    (sig, handler), = installed
    assert sig == signal.SIGINT
    handler(signal.SIGINT, None)
    assert 0 < cfg.optimization.stop_time_hours < 1e-9
    assert installed[-1] == (signal.SIGINT, signal.default_int_handler)


def test_the_scripts_always_name_the_plugin(monkeypatch):
    """Without --user-dir fairseq does not know the plugin's tasks (`invalid choice: 'caption'`): every command
    scripts/train.sh and evaluate.sh build from a shipped configuration names it."""
    monkeypatch.setenv("DEMO_DATA", "/data")
    monkeypatch.setenv("DEMO_RUNS", "/runs")
    configs = [p for p in sorted((REPO / "configs").rglob("*.yaml"))
               if {"task", "data", "arch"} <= yaml_config.load(str(p)).keys()]
    assert len(configs) > 30
    for path in configs:
        for cmd in (yaml_config.build_command(str(path)), yaml_config.build_command(str(path), checkpoint="x.pt")):
            assert cmd[cmd.index("--user-dir") + 1] == yaml_config.default_user_dir(), path
