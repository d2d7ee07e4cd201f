"""fairseq-generate --path evaluates with the task settings the checkpoint was trained with (the rules
are in ofa_prompt/tasks/saved_settings.py): the merge rule and the report as pure functions, the
checkpoint formats, and stock fairseq-train / fairseq-generate on a micro snli_ve model."""
import argparse
import os
import subprocess

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import tiny_data
from conftest import BIN, BPE, MICRO, REPO, as_options
from ofa_prompt.checkpoint import BACKBONE_KEY
from ofa_prompt.fairseq_compat.config import explicit_options
from ofa_prompt.file_version import FileChangedError
from ofa_prompt.tasks import saved_settings as ss
from ofa_prompt.tasks.saved_settings import SHARED
from ofa_prompt.tasks.snli_ve import SnliVeConfig

MICRO_CLI = as_options(MICRO)
# what training uses and a bare fairseq-generate would not: each differs from the option's default
TRAINED = ["--text-tokenizer", "word", "--patch-image-size", "32", "--max-image-size", "64", "--num-bins", "100",
           "--code-dict-size", "0", "--add-caption", "--prompt-type", "prev_output"]


# --- the merge rule ---------------------------------------------------------------------------------
def test_explicit_options_are_the_option_strings_before_a_bare_double_dash():
    argv = ["test.tsv", "--add-caption", "--patch-image-size=96", "--prompt-type", "src",
            "--model-overrides={'max_src_length': 3}", "--", "--max-src-length"]
    assert explicit_options(argv) == {"add_caption", "patch_image_size", "prompt_type", "model_overrides"}


def test_overrides_then_command_line_then_checkpoint_then_default():
    given = {"data": "test.tsv", "add_caption": False, "patch_image_size": 96, "prompt_type": "none",
             "max_src_length": 128, "bpe_dir": None, "selected_cols": None}
    saved = {"data": "train.tsv", "add_caption": True, "patch_image_size": 32, "prompt_type": "src",
             "bpe_dir": "/train/BPE"}  # max_src_length not recorded
    inherited = ss.inherited_keys("snli_ve", "snli_ve", given)
    chosen = ss.merge(given, saved, inherited, explicit={"data", "patch_image_size"},
                      overrides={"prompt_type": "prev_output", "bpe_dir": "/eval/BPE"})
    assert chosen == {"data": ("test.tsv", ss.COMMAND_LINE), "add_caption": (True, ss.CHECKPOINT),
                      "patch_image_size": (96, ss.COMMAND_LINE), "prompt_type": ("prev_output", ss.OVERRIDES),
                      "max_src_length": (128, ss.DEFAULT), "bpe_dir": ("/eval/BPE", ss.OVERRIDES),
                      "selected_cols": (None, ss.DEFAULT)}
    # data and bpe_dir name files of the training run: never taken from the checkpoint
    bare = ss.merge({**given, "data": None}, saved, inherited, explicit=set(), overrides={})
    assert bare["data"] == (None, ss.DEFAULT) and bare["bpe_dir"] == (None, ss.DEFAULT)
    assert bare["patch_image_size"] == (32, ss.CHECKPOINT)


def test_command_line_and_overrides_must_agree():
    given = {"selected_cols": "1,2,3,4,5", "data": "a.tsv"}
    assert ss.merge(given, {}, set(), {"selected_cols"}, {"selected_cols": "1,2,3,4,5"})["selected_cols"] == \
        ("1,2,3,4,5", ss.OVERRIDES)
    with pytest.raises(ss.SettingsError, match=r"--selected-cols is '1,2,3,4,5' on the command line but '0,2'"):
        ss.merge(given, {}, set(), {"selected_cols"}, {"selected_cols": "0,2"})
    with pytest.raises(ss.SettingsError, match="the data argument is 'a.tsv' on the command line but 'b.tsv'"):
        ss.merge(given, {}, set(), {"data"}, {"data": "b.tsv"})


def test_what_each_kind_of_checkpoint_gives():
    keys = [f.name for f in SnliVeConfig.__dataclass_fields__.values()]
    own = ss.inherited_keys("snli_ve", "snli_ve", keys)
    assert {"add_caption", "prompt_type", "patch_image_size", "max_src_length", "selected_cols",
            "imagenet_default_mean_and_std", "text_tokenizer"} <= own
    assert not own & set(ss.NOT_FROM_CHECKPOINT) and "_name" not in own
    for pretraining in ("ofa", "unify_task", "mix"):  # zero-shot: only the dictionary and image input
        assert ss.inherited_keys("snli_ve", pretraining, keys) == set(SHARED) - {"bpe_dir"}
    assert ss.inherited_keys("snli_ve", None, keys) == set()
    with pytest.raises(ss.SettingsError, match=r"caption\.pt was trained for --task caption, not --task refcoco"):
        ss.inherited_keys("refcoco", "caption", keys, "caption.pt")


def test_difference_line_names_every_difference_in_one_line():
    chosen = {"patch_image_size": (480, ss.COMMAND_LINE), "add_caption": (False, ss.OVERRIDES),
              "prompt_type": ("prev_output", ss.CHECKPOINT), "selected_cols": ("0,2,3,4,5", ss.OVERRIDES),
              "data": ("test.tsv", ss.COMMAND_LINE)}
    saved = {"patch_image_size": 96, "add_caption": True, "prompt_type": "prev_output", "selected_cols": None,
             "data": "train.tsv"}
    inherited = {"patch_image_size", "add_caption", "prompt_type", "selected_cols"}
    diffs = ss.differences(chosen, saved, inherited, {"selected_cols": "0,2,3,4,5"})  # None: the default columns
    assert diffs == [("patch_image_size", 480, 96, ss.COMMAND_LINE), ("add_caption", False, True, ss.OVERRIDES)]
    line = ss.difference_line("ckpt.pt", diffs)
    assert "\n" not in line and line == (
        "task settings that differ from training (ckpt.pt): --patch-image-size=480 (trained with 96, from the "
        "command line); --add-caption=False (trained with True, from --model-overrides)")
    assert ss.difference_line("ckpt.pt", []) is None


def test_task_keys_of_model_overrides():
    keys = {"data", "bpe_dir", "selected_cols", "eval_cider"}
    text = ("{'data': 'x.tsv', 'bpe_dir': 'BPE', 'backbone': 'b.pt', 'eval_cider': False, "
            "'task': {'selected_cols': '1,4,2'}}")
    assert ss.task_overrides(text, keys) == {"data": "x.tsv", "bpe_dir": "BPE", "eval_cider": False,
                                             "selected_cols": "1,4,2"}  # backbone is the model's
    with pytest.raises(ss.SettingsError, match="--model-overrides=.*not a Python dict literal"):
        ss.task_overrides("{'data': ", keys)


def test_values_are_type_checked_as_the_tasks_options():
    assert ss.checked("snli_ve", {"patch_image_size": "96", "prompt_type": "src"}, "x") == \
        {"patch_image_size": 96, "prompt_type": "src"}
    with pytest.raises(ss.SettingsError, match="--prompt-type='decoder' from --model-overrides is not valid for "
                                               "--task snli_ve"):
        ss.checked("snli_ve", {"prompt_type": "decoder"}, ss.OVERRIDES)


# --- checkpoint formats -----------------------------------------------------------------------------
def test_checkpoint_formats(tmp_path):
    # OFA's older files: one `args` Namespace of every option, the task's name in args.task (a legacy pickle)
    old = tmp_path / "ofa_old.pt"
    torch.save({"args": argparse.Namespace(task="snli_ve", arch="ofa_large", add_caption=True, prompt_type="src",
                                           patch_image_size=480, data="../../dataset/snli_ve_train.tsv"),
                "model": {"w": torch.zeros(2)}}, old, _use_new_zipfile_serialization=False)
    name, options_ = ss.saved_task(ss.read_state(str(old)))
    assert name == "snli_ve" and options_["add_caption"] is True and options_["patch_image_size"] == 480
    # this plugin's prompt-only files hold fairseq-train's cfg beside the tuned tensors
    prompt_only = tmp_path / "prompt_only.pt"
    torch.save({"args": None, "cfg": {"task": {"_name": "caption", "max_src_length": 80}, "model": {}},
                "model": {BACKBONE_KEY: {"path": "/nowhere/backbone.pt"}}}, prompt_only)
    assert ss.saved_task(ss.read_state(str(prompt_only))) == ("caption", {"_name": "caption", "max_src_length": 80})
    assert ss.saved_task({"model": {}}) == (None, {})
    with pytest.raises(ss.SettingsError, match="checkpoint not found: .*missing.pt"):
        ss.read_state(str(tmp_path / "missing.pt"))
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ss.SettingsError, match="cannot read checkpoint .*bad.pt \\(--path\\): "):
        ss.read_state(str(tmp_path / "bad.pt"))
    # a checkpoint cut to half its size, as a full disk or a bad copy leaves it: the reason, not a traceback
    half = tmp_path / "half.pt"
    half.write_bytes(prompt_only.read_bytes()[:len(prompt_only.read_bytes()) // 2])
    with pytest.raises(ss.SettingsError, match="cannot read checkpoint .*half.pt \\(--path\\): "):
        ss.read_state(str(half))


def test_official_checkpoint_of_the_pretraining_task(reference):
    """OFA's newer files: cfg["task"] holds the task's options; here OFA's pretraining task `ofa`."""
    name, saved = ss.saved_task(ss.read_state(str(reference / "prompt.pt")))
    assert name == "ofa" and saved["patch_image_size"] == 64 and saved["selected_cols"] == "0,4,2"
    given = {"patch_image_size": 480, "selected_cols": None, "num_bins": 1000, "data": "test.tsv"}
    chosen = ss.merge(given, saved, ss.inherited_keys("caption", name, given), {"data"}, {})
    assert chosen["patch_image_size"] == (64, ss.CHECKPOINT) and chosen["selected_cols"] == (None, ss.DEFAULT)


def test_fairseq_train_configuration_is_left_alone(tmp_path):
    """Without --path (fairseq-train) nothing is read, whatever the command line says."""
    args = options.parse_args_and_arch(options.get_training_parser(), [
        "x.tsv", "--user-dir", str(REPO / "ofa_prompt"), "--task", "snli_ve", "--patch-image-size", "32", *MICRO_CLI])
    cfg = convert_namespace_to_omegaconf(args)
    before = dict(cfg.task)
    ss.apply_saved_settings(cfg.task, argv=["--model-overrides", "{'patch_image_size': 7}"])
    assert dict(cfg.task) == before and cfg.common_eval.path is None


def generation_task_cfg(tmp_path, *argv):
    args = options.parse_args_and_arch(options.get_generation_parser(), [
        "test.tsv", "--user-dir", str(REPO / "ofa_prompt"), "--task", "snli_ve", *argv])
    return convert_namespace_to_omegaconf(args).task


def test_ensemble_members_must_agree_on_what_they_give(tmp_path, caplog):
    for name, size in (("a", 32), ("b", 64)):
        torch.save({"args": None, "cfg": {"task": {"_name": "snli_ve", "patch_image_size": size, "add_caption": True}},
                    "model": {}}, tmp_path / f"{name}.pt")
    paths = f"{tmp_path}/a.pt:{tmp_path}/b.pt"
    with pytest.raises(ss.SettingsError, match=r"the checkpoints of --path differ in --patch-image-size \(32 in"):
        ss.apply_saved_settings(generation_task_cfg(tmp_path, "--path", paths), argv=[])
    argv = ["--path", paths, "--patch-image-size", "48"]
    cfg = generation_task_cfg(tmp_path, *argv)
    with caplog.at_level("INFO"):
        ss.apply_saved_settings(cfg, argv=argv)
    assert cfg.patch_image_size == 48 and cfg.add_caption is True
    messages = [r.getMessage() for r in caplog.records if r.name == ss.__name__]
    assert messages == [f"task settings from {tmp_path}/a.pt (trained with --task snli_ve): --add-caption=True",
                        f"task settings that differ from training ({tmp_path}/a.pt): --patch-image-size=48 "
                        "(trained with 32, from the command line)"]


# --- stock fairseq-train and fairseq-generate -------------------------------------------------------
def test_a_checkpoint_replaced_while_generate_loads_it_is_refused(tmp_path):
    """fairseq-generate reads --path twice (task settings here, then the weights): both must be one version."""
    ckpt = tmp_path / "checkpoint_best.pt"
    saved = {"args": None, "cfg": {"task": {"_name": "snli_ve", "patch_image_size": 32}}, "model": {}}
    torch.save(saved, ckpt)
    cfg = generation_task_cfg(tmp_path, "--path", str(ckpt), "--bpe-dir", str(BPE))
    task = tasks.setup_task(cfg)
    assert task.cfg.patch_image_size == 32
    newer = tmp_path / "newer.pt"
    torch.save({**saved, "cfg": {"task": {"_name": "snli_ve", "patch_image_size": 64}}}, newer)
    os.replace(newer, ckpt)  # a training run writing checkpoint_best.pt meanwhile
    with pytest.raises(FileChangedError, match="checkpoint_best.pt changed on disk between fairseq-generate's "
                                               "reading of its task settings and of its weights"):
        task.build_model(None, from_checkpoint=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro snli_ve model trained (1 update) with options that all differ from their defaults."""
    folder = tmp_path_factory.mktemp("saved_settings")
    tiny_data.write_dict(folder)
    tiny_data.write(folder / "snli_ve_train.tsv", tiny_data.rows("snli_ve", 8, seed=1))
    tiny_data.write(folder / "snli_ve_test.tsv", tiny_data.rows("snli_ve", 6, seed=2))
    run([f"{BIN}/fairseq-train", f"{folder}/snli_ve_train.tsv,{folder}/snli_ve_test.tsv", "--user-dir",
         str(REPO / "ofa_prompt"), "--task", "snli_ve", "--bpe-dir", str(folder), *TRAINED, *MICRO_CLI,
         "--criterion", "adjust_label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-3",
         "--batch-size", "4", "--max-update", "1", "--disable-validation",
         "--save-dir", str(folder / "ckpt"), "--num-workers", "0", "--no-epoch-checkpoints", "--cpu"])
    return folder


def run(cmd, ok=True):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert (p.returncode == 0) == ok, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def generate(folder, *extra, task="snli_ve", ok=True):
    return run([f"{BIN}/fairseq-generate", f"{folder}/snli_ve_test.tsv", "--user-dir", str(REPO / "ofa_prompt"),
                "--task", task, "--path", str(folder / "ckpt" / "checkpoint_last.pt"), "--gen-subset", "test",
                "--batch-size", "4", "--num-workers", "0", "--cpu", *extra], ok)


def hypotheses(p):
    """fairseq-generate's H lines: sample id, score and answer, in sample order."""
    return sorted(line for line in p.stdout.splitlines() + p.stderr.splitlines() if line.startswith("H-"))


def log_lines(p, text):
    return [line for line in (p.stdout + p.stderr).splitlines() if text in line]


@pytest.mark.slow
def test_generate_uses_the_training_settings_without_repeating_them(trained):
    repeated = generate(trained, "--bpe-dir", str(trained), *TRAINED)
    bare = generate(trained, "--bpe-dir", str(trained))
    assert len(hypotheses(bare)) == 6 and hypotheses(bare) == hypotheses(repeated)
    taken = log_lines(bare, "task settings from ")
    assert len(taken) == 1 and "--add-caption=True" in taken[0] and "--patch-image-size=32" in taken[0]
    assert not log_lines(bare, "differ from training") and not log_lines(repeated, "differ from training")
    # an option given explicitly wins, changes the scores, and is reported once with the one from overrides
    changed = generate(trained, "--bpe-dir", str(trained), "--patch-image-size", "48",
                       "--model-overrides", "{'add_caption': False}")
    assert len(hypotheses(changed)) == 6 and hypotheses(changed) != hypotheses(bare)
    differ = log_lines(changed, "differ from training")
    assert len(differ) == 1
    assert "--patch-image-size=48 (trained with 32, from the command line)" in differ[0]
    assert "--add-caption=False (trained with True, from --model-overrides)" in differ[0]


@pytest.mark.slow
def test_ofa_style_model_overrides_without_bpe_dir(trained):
    """OFA's evaluate scripts pass data, bpe_dir and selected_cols only through --model-overrides."""
    overrides = (f'{{"data":"{trained}/snli_ve_test.tsv","bpe_dir":"{trained}","selected_cols":"0,2,3,4,5"}}')
    ofa = generate(trained, "--model-overrides", overrides)
    bare = generate(trained, "--bpe-dir", str(trained))
    assert len(hypotheses(ofa)) == 6 and hypotheses(ofa) == hypotheses(bare)
    assert not log_lines(ofa, "differ from training")  # 0,2,3,4,5 are the columns training read (its default)


@pytest.mark.slow
def test_a_checkpoint_of_another_task_is_a_one_line_error(trained):
    p = generate(trained, "--bpe-dir", str(trained), task="refcoco", ok=False)
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if "error:" in line]
    assert errors == [f"fairseq-generate: error: {trained}/ckpt/checkpoint_last.pt was trained for --task snli_ve, "
                      "not --task refcoco: evaluate it with --task snli_ve, or give a checkpoint trained for refcoco"]
