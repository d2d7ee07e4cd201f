"""Chains of runs through prompt-only checkpoints (a copy renamed as OFA's README does, moved with or without its
backbone), and each kind of file given where the other is expected: one line saying which it is and where it goes."""
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from ofa_prompt import from_pretrained, load_model
from ofa_prompt.checkpoint import (
    BACKBONE_KEY,
    WrongFileKind,
    check_resume_file,
    file_kind,
    model_args,
    read_checkpoint,
    store_model_args,
)
from ofa_prompt.checkpoint.state_dict import BackboneNotFound
from ofa_prompt.errors import InputError
from ofa_prompt.fairseq_compat.patches import input_error_within
from ofa_prompt.prompt_file import attach_prompts, export_prompts, load_prompt_file
from ofa_prompt.tasks.saved_settings import read_state
from test_prompt_only import io, logits_of, write_prompt_checkpoint


@pytest.fixture
def files(tmp_path, reference):
    """backbone.pt, a prompt-only checkpoint trained on it (run/checkpoint_best.pt) and its prompt file."""
    backbone = tmp_path / "backbone.pt"
    shutil.copy(reference / "plain.pt", backbone)
    (tmp_path / "run").mkdir()
    checkpoint = tmp_path / "run" / "checkpoint_best.pt"
    trained = write_prompt_checkpoint(reference, backbone, checkpoint).eval()
    state = read_checkpoint(str(checkpoint))  # as fairseq-train writes it without --backbone: not in its arguments
    args = model_args(state)
    args.backbone = None
    store_model_args(state, args)
    torch.save(state, checkpoint)
    prompts = tmp_path / "prompts.safetensors"
    export_prompts(str(checkpoint), str(prompts))
    return backbone, checkpoint, prompts, trained


def test_file_kinds_are_told_apart_by_their_first_bytes(tmp_path, files):
    backbone, checkpoint, prompts, _ = files
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": {}}, legacy, _use_new_zipfile_serialization=False)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")  # claims a 5-byte header, holds 2 bytes
    assert [file_kind(str(p)) for p in (backbone, checkpoint, legacy, prompts, junk)] == \
        ["torch", "torch", "torch", "safetensors", "other"]


def test_a_prompt_file_where_a_checkpoint_goes_says_so_in_one_line(files):
    _, _, prompts, _ = files
    for read in (read_checkpoint, load_model, from_pretrained, read_state):
        with pytest.raises(WrongFileKind) as error:
            read(str(prompts))
        message = str(error.value)
        assert f"{prompts} is a prompt file (safetensors), not a fairseq checkpoint" in message, read
        assert "--prompt-file" in message and "prompts=FILE" in message and "\n" not in message
    with pytest.raises(WrongFileKind, match=r"^--path .*prompts.safetensors is a prompt file"):
        read_state(str(prompts))


def test_a_checkpoint_where_a_prompt_file_goes_says_so_in_one_line(reference, files):
    backbone, checkpoint, _, _ = files
    model = load_model(str(backbone))
    for path in (checkpoint, backbone):
        for read in (load_prompt_file, lambda p: attach_prompts(model, p)):
            with pytest.raises(WrongFileKind) as error:
                read(str(path))
            message = str(error.value)
            assert f"{path} is a torch file" in message and "not a prompt file" in message
            assert "python -m ofa_prompt.prompt_file export CHECKPOINT OUT.safetensors" in message
            assert "\n" not in message


@pytest.mark.parametrize("option", ["restore_file", "finetune_from_model"])
def test_fairseq_train_refuses_a_prompt_file_to_start_from(tmp_path, files, option):
    _, _, prompts, _ = files
    checkpoint = {"save_dir": str(tmp_path / "save"), "restore_file": "checkpoint_last.pt", "checkpoint_suffix": "",
                  "finetune_from_model": None, "continue_once": None, option: str(prompts)}
    cfg = OmegaConf.create({"checkpoint": checkpoint, "model": {"backbone": None}})
    flag = "--" + option.replace("_", "-")
    with pytest.raises(WrongFileKind, match=f"^{flag} {prompts} is a prompt file .*--prompt-init FILE"):
        check_resume_file(cfg.model)


def test_a_renamed_copy_of_a_prompt_only_checkpoint_starts_from_the_backbone_it_records(tmp_path, reference, files):
    """OFA's stage 2: --restore-file checkpoints/caption_stage1_best.pt, a copy of stage 1's best checkpoint. The
    copy is not the backbone: the backbone is the file it records (hash-checked)."""
    backbone, checkpoint, _, trained = files
    (tmp_path / "checkpoints").mkdir()
    copy = tmp_path / "checkpoints" / "caption_stage1_best.pt"
    shutil.copy(checkpoint, copy)
    resumed = load_model(str(copy), {"restore_file": str(copy)})  # as fairseq-train's build_model sees it
    assert resumed.start_file == str(copy) and resumed.cfg.backbone == str(backbone)
    case = io(reference, "plain")
    assert torch.equal(logits_of(resumed, case), logits_of(trained, case))
    assert resumed.tensors_not_in_checkpoint == set()  # the prompts came from the copy, none fresh


def test_a_moved_chain_names_both_files_and_what_to_pass(tmp_path, reference, files):
    backbone, checkpoint, _, trained = files
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(checkpoint, moved / "stage1_best.pt")
    shutil.move(backbone, moved / "ofa_base.pt")
    with pytest.raises(BackboneNotFound) as error:
        load_model(str(moved / "stage1_best.pt"), {"restore_file": str(moved / "stage1_best.pt")})
    message = str(error.value)
    assert message.startswith(f"{moved / 'stage1_best.pt'} holds prompts only; the backbone it records, {backbone}, "
                              "is missing")
    assert "--backbone NEW.pt (fairseq-train)" in message and "--model-overrides" in message
    found = load_model(str(moved / "stage1_best.pt"), {"backbone": str(moved / "ofa_base.pt")})
    assert found.cfg.backbone == str(moved / "ofa_base.pt")
    case = io(reference, "plain")
    assert torch.equal(logits_of(found, case), logits_of(trained, case))
    # the backbone given is a prompt-only checkpoint itself: refused, not loaded as a backbone
    with pytest.raises(InputError, match="is itself a prompt-only checkpoint|not the one the prompts were trained on"):
        load_model(str(moved / "stage1_best.pt"), {"backbone": str(moved / "stage1_best.pt")})


def test_the_prompt_only_checkpoint_records_the_recorded_backbone_again(tmp_path, reference, files):
    """A run restored from the renamed copy writes checkpoints that record the backbone, not the copy."""
    from ofa_prompt.checkpoint import tuned_state_dict

    backbone, checkpoint, _, _ = files
    copy = tmp_path / "caption_stage1_best.pt"
    shutil.copy(checkpoint, copy)
    model = load_model(str(copy), {"restore_file": str(copy)})
    saved = tuned_state_dict(model, model.state_dict())
    assert saved[BACKBONE_KEY]["path"] == str(backbone)
    assert saved[BACKBONE_KEY]["sha256"] == read_checkpoint(str(checkpoint))["model"][BACKBONE_KEY]["sha256"]


def test_an_input_error_wrapped_by_fairseq_is_still_found():
    def fairseq_loads():
        try:
            raise WrongFileKind("x.pt: the message")
        except Exception:  # fairseq's Trainer.load_checkpoint
            raise Exception("Cannot load model parameters from checkpoint x.pt; please ensure that the "
                            "architectures match.")

    with pytest.raises(Exception) as error:
        fairseq_loads()
    assert str(input_error_within(error.value)) == "x.pt: the message"
    assert input_error_within(ValueError("unrelated")) is None


def test_a_run_stopped_before_its_max_update_is_told_from_a_finished_one(tmp_path):
    """SIGTERM and Ctrl-C make fairseq-train save and exit 0, as a finished run does: the demo caches a pretrained
    backbone only when its checkpoint reached --max-update (an interrupted one was cached before)."""
    from ofa_prompt.checkpoint.files import unfinished

    def state(done, planned):
        return {"cfg": {"optimization": {"max_update": planned}}, "optimizer_history": [{"num_updates": done}]}

    assert unfinished(state(633, 1500)) == "it stopped at update 633 of --max-update 1500"
    assert unfinished(state(1500, 1500)) is None and unfinished(state(10, 0)) is None  # 0: no --max-update
    assert "python3 - \"$DEMO_RUNS/pretrain/checkpoint_last.pt\"" in (REPO / "scripts" / "demo.sh").read_text()
