"""YAML configurations: every shipped file parses and becomes a command fairseq's own parser accepts;
mistakes are errors that name the key."""
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from fairseq import options

from ofa_prompt import yaml_config
from ofa_prompt.yaml_config import ConfigError, build_command, load

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(CONFIGS.rglob("*.yaml"))
# the files that name everything a run needs; the others (common settings, tasks, methods) are their bases
RUNNABLE = [p for p in ALL if {"task", "data", "arch"} <= load(str(p)).keys()]
DEMO_ENV = {"DEMO_DATA": "/tmp/demo/data", "DEMO_RUNS": "/tmp/demo/runs"}


@pytest.fixture(autouse=True)
def demo_environment(monkeypatch):
    for name, value in DEMO_ENV.items():
        monkeypatch.setenv(name, value)


def test_configs_are_shipped():
    names = {p.relative_to(CONFIGS).as_posix() for p in RUNNABLE}
    assert {"demo/pretrain.yaml", "demo/caption_prompt.yaml"} <= names
    for size in ("ofa_base", "ofa_large"):
        for task in ("caption", "vqa", "refcoco", "snli_ve"):
            for method in ("prompt", "finetune", "adapter", "bitfit"):
                assert f"{size}/{task}_{method}.yaml" in names


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_yaml_loads(path):
    load(str(path))


def parse_train(command):
    assert command[0] == "fairseq-train"
    return options.parse_args_and_arch(options.get_training_parser(), input_args=command[1:])


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_fairseq_parsers_accept_the_commands(path):
    cfg = load(str(path))
    args = parse_train(build_command(str(path)))
    assert args.task == cfg["task"] and args.arch == cfg["arch"]
    assert args.tuning_method == cfg.get("tuning", "auto")
    gen = build_command(str(path), checkpoint="checkpoint_best.pt")
    assert gen[0] == "fairseq-generate"
    gen_args = options.parse_args_and_arch(options.get_generation_parser(), input_args=gen[1:])
    assert gen_args.path == "checkpoint_best.pt" and gen_args.task == cfg["task"]


@pytest.mark.parametrize("size", ["ofa_base", "ofa_large"])
@pytest.mark.parametrize("task", ["caption", "vqa", "refcoco", "snli_ve"])
def test_paper_prompt_setups(size, task):
    args = parse_train(build_command(str(CONFIGS / size / f"{task}_prompt.yaml")))
    assert args.encoder_prompt and args.decoder_prompt
    assert args.encoder_prompt_length == args.decoder_prompt_length == 64
    assert args.lr == [0.03] and args.patch_image_size == 480
    assert args.finetune_from_model == f"checkpoints/{size}.pt"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BASIC = "task: caption\ndata: a.tsv,b.tsv\narch: ofa_prompt_tiny\n"


def test_mapping_to_options_and_overrides(tmp_path):
    path = write(tmp_path, "c.yaml", BASIC + "tuning: prompt\nrestore_file: pre.pt\ntask_options: {selected_cols: [0, 4, 2]}\n"
                 "train:\n  encoder-prompt: true\n  decoder-prompt: false\n  lr: 0.03\n  eval-args: {beam: 5}\n"
                 "  adam-betas: '(0.9,0.999)'\n  seed: null\ngenerate: {beam: 5}\n")
    cmd = build_command(path)
    assert cmd[:8] == ["fairseq-train", "a.tsv,b.tsv", "--user-dir", yaml_config.default_user_dir(), "--task", "caption",
                       "--arch", "ofa_prompt_tiny"]
    line = shlex.join(cmd)
    assert "--finetune-from-model pre.pt --tuning-method prompt --selected-cols 0,4,2" in line
    assert "--encoder-prompt --lr 0.03 --eval-args '{\"beam\":5}' --adam-betas '(0.9,0.999)'" in line
    assert "--decoder-prompt" not in line and "--seed" not in line and "--beam" not in line
    over = shlex.join(build_command(path, ["lr=0.5", "decoder_prompt=true", "encoder-prompt=false", "selected-cols=0,4",
                                           "arch=ofa_prompt_base", "restore_file=null", "generate.beam=2"]))
    assert "--lr 0.5" in over and "--decoder-prompt" in over and "--encoder-prompt" not in over
    assert "--selected-cols 0,4" in over and "--arch ofa_prompt_base" in over and "--finetune-from-model" not in over
    gen = shlex.join(build_command(path, ["beam=3", "test_data=t.tsv"], checkpoint="x.pt"))
    assert gen.startswith("fairseq-generate t.tsv --user-dir") and "--path x.pt" in gen
    assert "--beam 3" in gen and "--lr" not in gen and "--selected-cols 0,4,2" in gen


def test_base_files_merge(tmp_path):
    write(tmp_path, "parent.yaml", BASIC + "train: {lr: 0.1, max-update: 5}\n")
    child = write(tmp_path, "child.yaml", "base: parent.yaml\ntrain: {lr: 0.2}\n")
    line = shlex.join(build_command(child))
    assert "--lr 0.2" in line and "--max-update 5" in line and "--task caption" in line


@pytest.mark.parametrize("text, override, message", [
    (BASIC + "epochs: 3\n", [], "unknown key 'epochs'"),
    (BASIC.replace("arch: ofa_prompt_tiny", "arch: 3"), [], "'arch' must be str"),
    (BASIC + "tuning: lora\n", [], "'tuning' must be one of"),
    (BASIC + "train: [lr, 0.1]\n", [], "'train' must be a mapping"),
    (BASIC + "train: {arch: ofa_prompt_base}\n", [], "train.arch: set it with the top-level key 'arch'"),
    (BASIC + "train: {lr: {a: [1, {b: 2}]}, x: [[1]]}\n", [], "train.x: unsupported value"),
    (BASIC + "train: {'bad name': 1}\n", [], "train.bad name: not a valid option name"),
    (BASIC, ["lr"], "expected key=value"),
    (BASIC, ["nosection.lr=1"], "unknown section 'nosection'"),
    (BASIC, ["tuning=lora"], "'tuning' must be one of"),
    (BASIC, ["train=1"], "'train' cannot be overridden as a whole"),
    ("task: caption\ndata: a.tsv\n", [], "missing required key(s): arch"),
    ("- a\n- b\n", [], "must be a mapping"),
    ("task: [unclosed\n", [], "not valid YAML"),
])
def test_mistakes_name_the_key(tmp_path, text, override, message):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=None) as info:
        build_command(path, override)
    assert message in str(info.value)
    if not override:
        assert "bad.yaml" in str(info.value)


def test_base_cycle_and_missing_file(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load(str(tmp_path / "a.yaml"))
    with pytest.raises(ConfigError, match="not found"):
        load(str(tmp_path / "missing.yaml"))


def test_command_line_prints_the_command_or_the_error(tmp_path):
    path = write(tmp_path, "c.yaml", BASIC)
    ok = subprocess.run([sys.executable, "-m", "ofa_prompt.yaml_config", path, "lr=0.1"], capture_output=True, text=True)
    assert ok.returncode == 0 and shlex.split(ok.stdout)[-2:] == ["--lr", "0.1"]
    bad = subprocess.run([sys.executable, "-m", "ofa_prompt.yaml_config", path, "oops.lr=1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown section 'oops'" in bad.stderr


def test_environment_variables(tmp_path, monkeypatch):
    path = write(tmp_path, "env.yaml", BASIC.replace("a.tsv,b.tsv", "$ROOT/a.tsv") + "task_options: {bpe-dir: '${ROOT}/bpe'}\n")
    monkeypatch.setenv("ROOT", "/data")
    line = shlex.join(build_command(path))
    assert "fairseq-train /data/a.tsv" in line and "--bpe-dir /data/bpe" in line
    monkeypatch.delenv("ROOT")
    with pytest.raises(ConfigError, match=r"env.yaml: data: uses \$ROOT, which is not set"):
        build_command(path)
