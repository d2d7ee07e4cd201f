"""Loading official checkpoints: a prompt-less backbone into a prompted model, and clear errors when a
checkpoint does not fit."""

import pytest
import torch

from conftest import build_micro
from ofa_prompt import load_model
from ofa_prompt.checkpoint import CheckpointMismatchError, model_args, read_checkpoint


def reference_args(reference, **changes):
    args = model_args(read_checkpoint(str(reference / "plain.pt")))
    for k, v in changes.items():
        setattr(args, k, v)
    return args


def build_like(reference, **changes):
    from types import SimpleNamespace

    from ofa_prompt.data.dictionary import build_ofa_dictionary
    from ofa_prompt.models.ofa import OFAModel

    d = build_ofa_dictionary(str(reference / "dict.txt"))
    return OFAModel.build_model(reference_args(reference, **changes),
                                SimpleNamespace(source_dictionary=d, target_dictionary=d))


def test_load_model_builds_real_dictionary_and_eval_mode(reference):
    model = load_model(str(reference / "prompt.pt"), {"bpe_dir": str(reference)})
    assert not model.training
    assert len(model.encoder.dictionary) == 9397
    assert model.encoder.dictionary.index("<bin_0>") == 8397
    assert model.tuning == "prompt"


def test_prompt_less_backbone_restores_into_prompted_model(reference):
    torch.manual_seed(0)
    model = build_like(reference, encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=16,
                       decoder_prompt_length=16)
    fresh_prompt = model.encoder.encoder_prompt_encoder.embedding.weight.detach().clone()
    state = read_checkpoint(str(reference / "plain.pt"))["model"]
    model.load_state_dict(dict(state), strict=True)
    ours = model.state_dict()
    for key, value in state.items():
        if key in ours:
            assert torch.equal(ours[key], value.to(ours[key].dtype)), key
    assert torch.equal(model.encoder.encoder_prompt_encoder.embedding.weight, fresh_prompt)
    assert model.encoder.encoder_prompt_encoder.embedding.weight.requires_grad
    assert not model.encoder.layers[0].fc1.weight.requires_grad


def test_missing_backbone_key_is_an_error_not_a_reinit(reference):
    model = build_like(reference, encoder_prompt=True)
    state = dict(read_checkpoint(str(reference / "plain.pt"))["model"])
    del state["encoder.layers.1.fc1.weight"]
    with pytest.raises(CheckpointMismatchError, match="encoder.layers.1.fc1.weight"):
        model.load_state_dict(state, strict=True)


def test_other_architecture_names_the_keys(reference):
    model = build_like(reference, encoder_layers=3)
    with pytest.raises(CheckpointMismatchError, match="encoder.layers.2"):
        model.load_state_dict(dict(read_checkpoint(str(reference / "plain.pt"))["model"]), strict=True)


def test_other_dictionary_size_is_explained(reference):
    model = build_micro()  # 300-entry dictionary, same micro sizes as the fixtures
    state = dict(read_checkpoint(str(reference / "plain.pt"))["model"])
    with pytest.raises(CheckpointMismatchError, match="dictionary has 9397 entries"):
        model.load_state_dict(state, strict=True)


def test_unreadable_checkpoint_names_the_file(tmp_path, reference):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes((reference / "plain.pt").read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_model(str(bad))
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_model(str(tmp_path / "nothere.pt"))


def test_checkpoint_copies_are_atomic(tmp_path, monkeypatch):
    """fairseq makes checkpoint_last.pt by copying the checkpoint it just wrote: a copy that dies halfway
    leaves the previous checkpoint_last.pt whole."""
    import shutil

    from fairseq import checkpoint_utils

    src, dst = tmp_path / "checkpoint_1_3.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"previous checkpoint")

    def dies_halfway(a, b):
        with open(a, "rb") as f, open(b, "wb") as g:
            g.write(f.read()[:1500])
        raise OSError("killed mid-copy")

    monkeypatch.setattr(shutil, "copyfile", dies_halfway)
    with pytest.raises(OSError, match="mid-copy"):
        checkpoint_utils.PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"previous checkpoint"
    monkeypatch.undo()
    assert checkpoint_utils.PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1_3.pt", "checkpoint_last.pt"]


def test_damaged_resume_file_names_the_newest_readable_checkpoint(tmp_path):
    from omegaconf import OmegaConf

    from ofa_prompt.checkpoint import check_resume_file

    for name in ("checkpoint_1_1.pt", "checkpoint_1_2.pt", "checkpoint_last.pt"):
        torch.save({"model": {"w": torch.arange(1000.0)}}, tmp_path / name)
    last = tmp_path / "checkpoint_last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the zip's CRC check finds it
    last.write_bytes(bytes(data))
    cfg = OmegaConf.create({"checkpoint": {"save_dir": str(tmp_path), "restore_file": "checkpoint_last.pt",
                                           "checkpoint_suffix": "", "finetune_from_model": None, "continue_once": None},
                            "model": {"backbone": None}})
    with pytest.raises(ValueError) as error:
        check_resume_file(cfg.model)
    assert f"{last} cannot be read" in str(error.value) and "fails its CRC check" in str(error.value)
    assert str(error.value).endswith(f"resume from it with --restore-file {tmp_path / 'checkpoint_1_2.pt'}")
    for name in ("checkpoint_1_1.pt", "checkpoint_1_2.pt"):
        (tmp_path / name).unlink()
    with pytest.raises(ValueError, match="No readable checkpoint"):
        check_resume_file(cfg.model)
    last.unlink()
    check_resume_file(cfg.model)  # a first run: nothing to resume from, nothing to check
