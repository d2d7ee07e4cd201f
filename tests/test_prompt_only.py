"""Prompt-only checkpoints, prompt files (export / merge / switch) and their failure modes."""
import shutil

import pytest
import torch

from ofa_prompt import load_model
from ofa_prompt.checkpoint import BACKBONE_KEY, CheckpointMismatchError, model_args, read_checkpoint, tuned_state_dict
from ofa_prompt.prompt_file import (
    attach_prompts,
    export_prompts,
    load_prompt_file,
    main as prompt_file_cli,
    merge_prompts,
)

TOL = 1e-4


def io(reference, name):
    return torch.load(reference / f"io_{name}.pt")


def logits_of(model, case):
    with torch.no_grad():
        return model(**case["inputs"])[0]


def write_prompt_checkpoint(reference, backbone, out, **changes):
    """What fairseq-train writes for a prompt-tuned model: cfg + the prompt-only state dict."""
    state = read_checkpoint(str(reference / "plain.pt"))
    args = model_args(state)
    vars(args).update(dict(encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=8, decoder_prompt_length=8,
                           backbone=str(backbone), bpe_dir=str(reference)), **changes)
    model = load_model(str(reference / "plain.pt"), vars(args))  # backbone weights + fresh prompts
    torch.manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_()
    state["cfg"]["model"] = args
    state["model"] = tuned_state_dict(model, model.state_dict())
    torch.save(state, out)
    return model


@pytest.fixture
def backbone(tmp_path, reference):
    path = tmp_path / "backbone.pt"
    shutil.copy(reference / "plain.pt", path)
    return path


def test_prompt_only_checkpoint_is_small_and_reloads_exactly(tmp_path, reference, backbone):
    ckpt = tmp_path / "checkpoint_best.pt"
    trained = write_prompt_checkpoint(reference, backbone, ckpt).eval()
    saved = read_checkpoint(str(ckpt))["model"]
    assert set(saved) == {BACKBONE_KEY, "encoder.encoder_prompt_encoder.embedding.weight",
                          "decoder.decoder_prompt_encoder.embedding.weight"}
    assert saved[BACKBONE_KEY]["path"] == str(backbone) and len(saved[BACKBONE_KEY]["sha256"]) == 64
    assert ckpt.stat().st_size * 20 < backbone.stat().st_size
    reloaded = load_model(str(ckpt))
    case = io(reference, "plain")
    assert torch.equal(logits_of(reloaded, case), logits_of(trained, case))
    assert len(reloaded.full_state_dict()) > 100  # the backbone came back from backbone.pt


def test_prompt_only_checkpoint_backbone_moved_or_changed(tmp_path, reference, backbone):
    ckpt = tmp_path / "checkpoint_last.pt"
    write_prompt_checkpoint(reference, backbone, ckpt)
    moved = tmp_path / "elsewhere.pt"
    backbone.rename(moved)
    with pytest.raises(FileNotFoundError, match="backbone.pt.*--model-overrides"):
        load_model(str(ckpt))
    load_model(str(ckpt), {"backbone": str(moved)})  # found again by an override
    other = tmp_path / "other.pt"
    state = read_checkpoint(str(moved))
    state["model"]["encoder.layer_norm.bias"] = state["model"]["encoder.layer_norm.bias"] + 1
    torch.save(state, other)
    with pytest.raises(CheckpointMismatchError, match="not the one the prompts were trained on"):
        load_model(str(ckpt), {"backbone": str(other)})
    forced = load_model(str(ckpt), {"backbone": str(other), "force_backbone": True})
    assert torch.allclose(forced.encoder.layer_norm.bias, state["model"]["encoder.layer_norm.bias"].float())


@pytest.mark.parametrize("name", ["prompt", "prompt_proj"])
def test_exported_prompts_give_the_checkpoint_outputs(tmp_path, reference, name):
    out = tmp_path / f"{name}.safetensors"
    meta = export_prompts(str(reference / f"{name}.pt"), str(out))
    assert meta["sides"]["encoder"] == {"embed_dim": 64, "heads": 4, "num_layers": 2, "length": 8, "layers": [0, 1]}
    kv, _ = load_prompt_file(str(out))
    assert set(kv) == {"encoder", "decoder"}  # the MLP of prompt_proj is folded into plain tensors
    model = load_model(str(reference / "plain.pt"), {"bpe_dir": str(reference)})
    attach_prompts(model, str(out))
    case = io(reference, name)
    assert (logits_of(model, case) - case["outputs"]["logits"]).abs().max() < TOL


def test_switching_prompts_on_one_backbone_equals_separate_loads(tmp_path, reference):
    files = {}
    for name in ("prompt", "prompt_proj"):
        files[name] = tmp_path / f"{name}.safetensors"
        export_prompts(str(reference / f"{name}.pt"), str(files[name]))
    shared = load_model(str(reference / "plain.pt"), {"bpe_dir": str(reference)})
    case = io(reference, "plain")
    for name in ("prompt", "prompt_proj", "prompt"):
        attach_prompts(shared, str(files[name]))
        separate = load_model(str(reference / f"{name}.pt"), {"bpe_dir": str(reference)})
        assert (logits_of(shared, case) - logits_of(separate, case)).abs().max() < TOL


def test_merge_makes_one_full_checkpoint(tmp_path, reference):
    prompts = tmp_path / "p.safetensors"
    prompt_file_cli(["export", str(reference / "prompt_proj.pt"), str(prompts)])
    merged = tmp_path / "merged.pt"
    prompt_file_cli(["merge", "--backbone", str(reference / "plain.pt"), "--prompts", str(prompts),
                     "--out", str(merged)])
    model = load_model(str(merged), {"bpe_dir": str(reference)})
    assert model.encoder.encoder_prompt_encoder.trans is None  # folded table, OFA layout
    case = io(reference, "prompt_proj")
    assert (logits_of(model, case) - case["outputs"]["logits"]).abs().max() < TOL


def test_merge_onto_a_backbone_written_by_fairseq_train(tmp_path, reference):
    """fairseq-train (this plugin included) records cfg['model'] as a plain dict, OFA's releases a Namespace."""
    state = read_checkpoint(str(reference / "plain.pt"))
    state["cfg"]["model"] = dict(vars(model_args(state)))
    backbone = tmp_path / "backbone.pt"
    torch.save(state, backbone)
    prompts = tmp_path / "p.safetensors"
    export_prompts(str(reference / "prompt.pt"), str(prompts))
    merged = tmp_path / "merged.pt"
    merge_prompts(str(backbone), str(prompts), str(merged), force_backbone=True)
    assert isinstance(read_checkpoint(str(merged))["cfg"]["model"], dict)
    model = load_model(str(merged), {"bpe_dir": str(reference)})  # was: prompt tables not in this model
    case = io(reference, "prompt")
    assert (logits_of(model, case) - case["outputs"]["logits"]).abs().max() < TOL


def test_bad_prompt_files(tmp_path, reference):
    good = tmp_path / "good.safetensors"
    export_prompts(str(reference / "prompt.pt"), str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        load_prompt_file(str(truncated))
    pickle = tmp_path / "evil.safetensors"
    pickle.write_bytes(b"\x80\x04K\x01.")  # a pickle, not a safetensors file: never unpickled
    with pytest.raises(ValueError, match="evil.safetensors"):
        load_prompt_file(str(pickle))
    wider = load_model(str(reference / "plain.pt"), {"bpe_dir": str(reference)})
    wider.cfg.encoder_attention_heads = 8  # stands for a model of another architecture
    with pytest.raises(ValueError, match="another architecture .*heads 4 in the file vs 8"):
        attach_prompts(wider, str(good))
    wider.cfg.encoder_attention_heads = 4
    # stand-ins for models of another depth and width
    for key, value, expected in (("encoder_layers", 3, "num_layers 2 in the file vs 3"),
                                 ("encoder_embed_dim", 128, "embed_dim 64 in the file vs 128")):
        original = getattr(wider.cfg, key)
        setattr(wider.cfg, key, value)
        with pytest.raises(ValueError, match=f"good.safetensors was made for another architecture .*{expected}"):
            attach_prompts(wider, str(good))
        setattr(wider.cfg, key, original)


@pytest.mark.parametrize("change, complaint", [
    (lambda m: m.pop("sides"), "'sides' must map"),
    (lambda m: m["sides"]["encoder"].pop("length"), "encoder: length must be positive integers, got length=None"),
    (lambda m: m["sides"]["encoder"].update(heads="4"), "heads must be positive integers, got heads='4'"),
    (lambda m: m["sides"]["decoder"].update(layers=[0, 7]), "'layers' must list distinct layer indices below"),
    (lambda m: m["sides"].update(encoder=[1, 2]), "side 'encoder' must be one of"),
    (lambda m: m.update(backbone="ofa_base.pt"), "'backbone' must record the path and sha256"),
])
def test_prompt_file_with_malformed_metadata_is_named(tmp_path, reference, change, complaint):
    import json

    from safetensors.torch import load_file, save_file

    good = tmp_path / "good.safetensors"
    meta = export_prompts(str(reference / "prompt.pt"), str(good))
    change(meta)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata={"ofa_prompt": json.dumps(meta)})
    with pytest.raises(ValueError) as error:
        load_prompt_file(str(bad))
    assert f"{bad}: malformed prompt file metadata" in str(error.value) and complaint in str(error.value)


def test_prompt_file_checked_against_the_backbone_in_use(tmp_path, reference, backbone):
    ckpt, prompts = tmp_path / "checkpoint_best.pt", tmp_path / "caption.safetensors"
    write_prompt_checkpoint(reference, backbone, ckpt)
    assert export_prompts(str(ckpt), str(prompts))["backbone"]["path"] == str(backbone)
    attach_prompts(load_model(str(backbone)), str(prompts))  # the backbone it was tuned on
    attach_prompts(load_model(str(ckpt)), str(prompts))  # the same backbone, read through a prompt-only checkpoint
    other = tmp_path / "other.pt"
    state = read_checkpoint(str(backbone))
    state["model"]["encoder.layer_norm.bias"] = state["model"]["encoder.layer_norm.bias"] + 1
    torch.save(state, other)
    model = load_model(str(other))
    mismatch = f"{prompts} was tuned on backbone {backbone} .*not on {other} "
    with pytest.raises(ValueError, match=mismatch + ".*force_backbone=True"):
        attach_prompts(model, str(prompts))
    attach_prompts(model, str(prompts), force_backbone=True)
    merged = tmp_path / "merged.pt"
    with pytest.raises(ValueError, match=mismatch + ".*--force-backbone"):
        prompt_file_cli(["merge", "--backbone", str(other), "--prompts", str(prompts), "--out", str(merged)])
    assert not merged.exists()
    prompt_file_cli(["merge", "--backbone", str(other), "--prompts", str(prompts), "--out", str(merged),
                     "--force-backbone"])
    merge_prompts(str(backbone), str(prompts), str(merged))


def test_failed_export_or_merge_leaves_existing_files(tmp_path, reference):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(ValueError, match="has no prompts"):
        export_prompts(str(reference / "plain.pt"), str(out))
    assert out.read_bytes() == b"precious"
    with pytest.raises(FileNotFoundError):
        merge_prompts(str(reference / "plain.pt"), str(tmp_path / "missing.safetensors"), str(out))
    assert out.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]  # no temporary files left behind


def test_exported_and_merged_files_get_the_umask_mode(tmp_path, reference):
    # shared model folders: a prompt file or merged checkpoint readable as the umask says (mkstemp gives 0600)
    import os
    import stat

    old = os.umask(0o022)
    try:
        prompts = tmp_path / "p.safetensors"
        export_prompts(str(reference / "prompt.pt"), str(prompts))
        merged = tmp_path / "merged.pt"
        merge_prompts(str(reference / "plain.pt"), str(prompts), str(merged))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(prompts).st_mode) == stat.S_IMODE(os.stat(merged).st_mode) == 0o644
