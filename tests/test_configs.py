"""YAML configurations: every shipped file parses and becomes a command fairseq's own parser accepts, the
shipped runs' commands stay those recorded in tests/data/config_commands.json; mistakes are errors that name
the key.

After an intended change to a shipped configuration's options, rewrite the recorded commands with
`python3 tests/test_configs.py --write-golden` and review the diff of the JSON file."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
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


def base_files(path: Path) -> set:
    """Every file `path` extends, directly or through its bases."""
    bases = yaml.safe_load(path.read_text()).get("base", [])
    bases = [bases] if isinstance(bases, str) else bases
    found = {(path.parent / b).resolve() for b in bases}
    return found.union(*(base_files(b) for b in found))


USED_AS_BASE = set().union(*(base_files(p) for p in RUNNABLE))


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_yaml_loads_and_is_used(path):
    cfg = load(str(path))
    assert cfg and set(cfg) <= {*yaml_config.SCALARS, *yaml_config.SECTIONS}
    for section in yaml_config.SECTIONS:  # option names come out in fairseq's dashed form
        assert all(yaml_config.OPTION_NAME.match(name) for name in cfg.get(section, {})), section
    # a file no run reaches would be dead settings a reader takes for the paper's
    assert path in RUNNABLE or path.resolve() in USED_AS_BASE, f"{path}: not runnable and no runnable config's base"


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


GOLDEN = Path(__file__).resolve().parent / "data" / "config_commands.json"
CHECKPOINT = "CHECKPOINT.pt"


def recorded_name(path: Path) -> str:
    return path.relative_to(CONFIGS.parent).as_posix()


def command_lines(name: str) -> dict:
    """{"train": ..., "generate": ...}: the lines `python -m ofa_prompt.yaml_config [--generate CHECKPOINT.pt] NAME`
    prints from the repo root, the installed package's folder (--user-dir) written USER_DIR."""
    path, user_dir = str(CONFIGS.parent / name), yaml_config.default_user_dir()
    return {"train": shlex.join(build_command(path)).replace(user_dir, "USER_DIR"),
            "generate": shlex.join(build_command(path, checkpoint=CHECKPOINT)).replace(user_dir, "USER_DIR")}


def option_groups(line: str):
    """(program and data argument, the options as sorted (--name[, value]) tuples).

    fairseq-train and fairseq-generate read their options with argparse, which sets each option wherever it
    stands when every option is given once (only a repeated option depends on order: the last one wins), so
    the comparison ignores the order the YAML bases merge the options in and refuses a repeated option;
    test_recorded_and_current_commands_parse_alike checks the same on fairseq's own parser."""
    tokens = shlex.split(line)
    groups, i = [], 2
    while i < len(tokens):
        name = tokens[i]
        if not name.startswith("--"):
            raise ValueError(f"{name!r} follows {tokens[i - 1]!r}: one value per option expected")
        takes_value = i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
        groups.append((name, tokens[i + 1]) if takes_value else (name,))
        i += 2 if takes_value else 1
    names = [g[0] for g in groups]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"option(s) given twice, so their order matters: {', '.join(repeated)}")
    return tokens[:2], sorted(groups)


def test_option_groups_tell_commands_apart():
    line = "fairseq-train a.tsv --task caption --lr 0.03 --fp16 --eval-args '{\"beam\":5}'"
    assert option_groups(line) == (["fairseq-train", "a.tsv"], [
        ("--eval-args", '{"beam":5}'), ("--fp16",), ("--lr", "0.03"), ("--task", "caption")])
    assert option_groups("fairseq-train a.tsv --fp16 --lr 0.03 --task caption --eval-args '{\"beam\":5}'") \
        == option_groups(line)  # reordered: the same command to argparse
    for changed in (line.replace(" --fp16", ""), line.replace("0.03", "0.3"), line.replace("a.tsv", "b.tsv"),
                    line.replace("--fp16", "--fp16 --cpu"), line.replace("--lr 0.03", "--lr-scheduler 0.03")):
        assert option_groups(changed) != option_groups(line), changed
    with pytest.raises(ValueError, match="given twice.*--lr"):
        option_groups(line + " --lr 0.1")
    with pytest.raises(ValueError, match="one value per option"):
        option_groups("fairseq-train a.tsv --lr 0.03 0.1")


RECORDED = json.loads(GOLDEN.read_text())


def test_every_runnable_config_is_recorded():
    assert sorted(map(recorded_name, RUNNABLE)) == sorted(RECORDED), \
        "a configuration was added or removed: see this module's docstring"


@pytest.mark.parametrize("mode", ["train", "generate"])
@pytest.mark.parametrize("name", sorted(RECORDED))
def test_commands_are_the_recorded_ones(name, mode):
    recorded, current = option_groups(RECORDED[name][mode]), option_groups(command_lines(name)[mode])
    assert current[0] == recorded[0]
    lost = [g for g in recorded[1] if g not in current[1]]
    added = [g for g in current[1] if g not in recorded[1]]
    assert not lost and not added, f"{name} {mode}: lost {lost}, added {added}"


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_and_current_commands_parse_alike(name):
    user_dir, lines = yaml_config.default_user_dir(), command_lines(name)
    for mode, parser in (("train", options.get_training_parser), ("generate", options.get_generation_parser)):
        recorded, current = (shlex.split(RECORDED[name][mode].replace("USER_DIR", user_dir))[1:],
                             shlex.split(lines[mode].replace("USER_DIR", user_dir))[1:])
        assert vars(options.parse_args_and_arch(parser(), input_args=current)) == \
            vars(options.parse_args_and_arch(parser(), input_args=recorded)), f"{name} {mode}"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BASIC = "task: caption\ndata: a.tsv,b.tsv\narch: ofa_prompt_tiny\n"


def test_mapping_to_options_and_overrides(tmp_path):
    path = write(tmp_path, "c.yaml", BASIC + "tuning: prompt\nrestore_file: pre.pt\n"
                 "task_options: {selected_cols: [0, 4, 2]}\n"
                 "train:\n  encoder-prompt: true\n  decoder-prompt: false\n  lr: 0.03\n  eval-args: {beam: 5}\n"
                 "  adam-betas: '(0.9,0.999)'\n  seed: null\ngenerate: {beam: 5}\n")
    cmd = build_command(path)
    assert cmd[:8] == ["fairseq-train", "a.tsv,b.tsv", "--user-dir", yaml_config.default_user_dir(),
                       "--task", "caption", "--arch", "ofa_prompt_tiny"]
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


@pytest.mark.slow
def test_command_line_prints_the_command_or_the_error(tmp_path):
    path = write(tmp_path, "c.yaml", BASIC)
    ok = subprocess.run([sys.executable, "-m", "ofa_prompt.yaml_config", path, "lr=0.1"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and shlex.split(ok.stdout)[-2:] == ["--lr", "0.1"]
    bad = subprocess.run([sys.executable, "-m", "ofa_prompt.yaml_config", path, "oops.lr=1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown section 'oops'" in bad.stderr


def test_environment_variables(tmp_path, monkeypatch):
    path = write(tmp_path, "env.yaml",
                 BASIC.replace("a.tsv,b.tsv", "$ROOT/a.tsv") + "task_options: {bpe-dir: '${ROOT}/bpe'}\n")
    monkeypatch.setenv("ROOT", "/data")
    line = shlex.join(build_command(path))
    assert "fairseq-train /data/a.tsv" in line and "--bpe-dir /data/bpe" in line
    monkeypatch.delenv("ROOT")
    with pytest.raises(ConfigError, match=r"env.yaml: data: uses \$ROOT, which is not set"):
        build_command(path)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-golden"]:
        sys.exit(f"usage: python3 {sys.argv[0]} --write-golden   (rewrites {GOLDEN})")
    os.environ.update(DEMO_ENV)  # as in the tests, so $DEMO_DATA / $DEMO_RUNS read the same
    lines = {recorded_name(path): command_lines(recorded_name(path)) for path in RUNNABLE}
    GOLDEN.write_text(json.dumps(lines, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
