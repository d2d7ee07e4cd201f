"""Cheap remedies for prompt tuning's slow convergence: a zero-initialized gate on the prompts' attention
(--prompt-gate), the residual reparameterization E + MLP(E) (--prompt-residual) and a frozen backbone without
dropout (--no-backbone-dropout); each takes effect, and prompt files made with them export, load and evaluate
to the live model's outputs."""
import shutil

import pytest
import torch

from conftest import build_micro, micro_batch
from ofa_prompt import load_model
from ofa_prompt.models.prompt import PromptMix, fold
from ofa_prompt.prompt_file import attach_prompts, load_prompt_file, main as prompt_file_cli
from test_prompt import _incremental
from test_prompt_only import io, logits_of, write_prompt_checkpoint

PROMPTS = dict(encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=5, decoder_prompt_length=6)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch)[0]


def _without_prompts(model, batch):
    saved = [stack.prompts for stack in (model.encoder, model.decoder)]
    for stack in (model.encoder, model.decoder):
        stack.replace_prompts(None)
    try:
        return _logits(model, batch)
    finally:
        for stack, module in zip((model.encoder, model.decoder), saved):
            stack.replace_prompts(module)


def _gates(model):
    return [model.encoder.encoder_prompt_encoder.gate, model.decoder.decoder_prompt_encoder.gate]


# ------------------------------------------------------------------------------------------------ the gate

def test_gate_at_zero_gives_the_frozen_models_outputs_exactly():
    torch.manual_seed(0)
    gated = build_micro(**PROMPTS, prompt_gate=True).eval()
    batch = micro_batch(gated)
    assert all(torch.equal(g, torch.zeros(2, 4)) for g in _gates(gated))  # per layer, per head, zero at the start
    assert torch.equal(_logits(gated, batch), _without_prompts(gated, batch))
    torch.manual_seed(0)
    plain = build_micro(**PROMPTS).eval()  # the same prompts without the gate do change the outputs
    assert (_logits(plain, batch) - _without_prompts(plain, batch)).abs().max() > 1e-3


def test_gradients_reach_the_gate_and_then_the_prompts():
    """At g = 0 only the gate has a gradient (the prompts' contribution is multiplied by tanh(0) = 0, as in
    LLaMA-Adapter); once the gate has moved, the prompts get theirs."""
    torch.manual_seed(0)
    model = build_micro(**PROMPTS, prompt_gate=True, prompt_dropout=0.0).train()
    batch = micro_batch(model)
    model(**batch)[0].logsumexp(-1).sum().backward()
    prompts = [model.encoder.encoder_prompt_encoder.embedding, model.decoder.decoder_prompt_encoder.embedding]
    assert all(g.grad is not None and g.grad.abs().min() > 0 for g in _gates(model))
    assert all(p.weight.grad.abs().max() == 0 for p in prompts)
    with torch.no_grad():
        for g in _gates(model):
            g.sub_(0.1 * g.grad.sign())
    model.zero_grad()
    model(**batch)[0].logsumexp(-1).sum().backward()
    assert all(p.weight.grad.abs().max() > 0 for p in prompts)


def _open_gates(model, value=0.7):
    with torch.no_grad():
        for i, g in enumerate(_gates(model)):
            g.copy_(torch.linspace(-value, value, g.numel()).view_as(g) + 0.1 * i)


@torch.no_grad()
def test_gated_prompts_decode_incrementally_as_in_one_pass():
    torch.manual_seed(0)
    model = build_micro(**PROMPTS, prompt_gate=True).eval()
    _open_gates(model)
    batch = micro_batch(model)
    full = _logits(model, batch)
    steps, _ = _incremental(model, batch, 5)
    assert (steps - full).abs().max() < 1e-4
    # and the gate matters: shutting it changes the outputs
    assert (full - _without_prompts(model, batch)).abs().max() > 1e-3


@torch.no_grad()
def test_gated_prompts_follow_beam_reordering():
    torch.manual_seed(0)
    model = build_micro(**PROMPTS, prompt_gate=True).eval()
    _open_gates(model)
    batch = micro_batch(model, bsz=2)
    batch = {k: v.index_select(0, torch.arange(2).repeat_interleave(3)) for k, v in batch.items()}
    batch["prev_output_tokens"][:, 1:] = torch.randint(4, 300, (6, 4), generator=torch.Generator().manual_seed(1))
    steps, prev = _incremental(model, batch, 5, reorder=torch.tensor([2, 0, 1, 5, 5, 3]))
    full = _logits(model, {**batch, "prev_output_tokens": prev})
    assert (steps[:, -1] - full[:, -1]).abs().max() < 1e-4


def test_gated_prompts_are_not_mixed_in_one_batch():
    model = build_micro(**PROMPTS, prompt_gate=True)
    kv = fold(model.encoder.encoder_prompt_encoder)
    with pytest.raises(ValueError, match="gated prompts .* cannot be mixed"):
        PromptMix([kv, kv])


# ------------------------------------------------------------------------------- the residual reparameterization

def test_residual_reparameterization_adds_an_mlp_to_the_table():
    torch.manual_seed(0)
    model = build_micro(**PROMPTS, prompt_residual=True, encoder_prompt_dim=16, decoder_prompt_dim=16)
    prompt = model.encoder.encoder_prompt_encoder
    assert prompt.residual is not None and prompt.residual[0].weight.shape == (16, 64)
    table, embedding = prompt.table(), prompt.embedding.weight
    assert table.shape == embedding.shape
    chunks = embedding.view(5, -1, 64)
    assert torch.allclose(table, (chunks + prompt.residual(chunks)).view(5, -1))
    assert (table - embedding).abs().max() > 1e-3
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "encoder.encoder_prompt_encoder.residual.0.weight" in trained  # the MLP trains with the prompts


# ---------------------------------------------------------------------------------- no dropout in the backbone

NOISY = dict(dropout=0.3, attention_dropout=0.3, activation_dropout=0.3, encoder_drop_path_rate=0.5,
             decoder_drop_path_rate=0.5, prompt_dropout=0.0)


def _two_training_passes(**options):
    torch.manual_seed(0)
    model = build_micro(**PROMPTS, **NOISY, **options).train()
    batch = micro_batch(model)
    return _logits(model, batch), _logits(model, batch), model


def test_no_backbone_dropout_makes_training_passes_deterministic():
    first, second, model = _two_training_passes(no_backbone_dropout=True)
    assert torch.equal(first, second)
    assert model.encoder.layers[0].self_attn.dropout == 0 and model.decoder.layers[1].drop_path.drop_prob == 0
    noisy_first, noisy_second, _ = _two_training_passes()
    assert not torch.equal(noisy_first, noisy_second)


def test_no_backbone_dropout_keeps_the_prompts_own_dropout():
    torch.manual_seed(0)
    model = build_micro(**PROMPTS, **{**NOISY, "prompt_dropout": 0.4}, no_backbone_dropout=True)
    assert model.encoder.encoder_prompt_encoder.dropout.p == 0.4
    batch = micro_batch(model)
    assert not torch.equal(_logits(model.train(), batch), _logits(model, batch))


# ----------------------------------------------------------------------------------------- refused combinations

@pytest.mark.parametrize("options, complaint", [
    (dict(**PROMPTS, prompt_residual=True, encoder_prompt_projection=True), "two reparameterizations"),
    (dict(no_backbone_dropout=True), "with finetuning nothing is frozen"),
    (dict(prompt_gate=True), "--prompt-gate=True given without --encoder-prompt"),
    (dict(prompt_residual=True), "--prompt-residual=True given without --encoder-prompt"),
])
def test_remedy_options_that_cannot_take_effect_are_refused(options, complaint):
    with pytest.raises(ValueError, match=complaint):
        build_micro(**options)


# ------------------------------------------------------------------------ prompt files: export, load, evaluate

REMEDIES = {
    "gate": dict(prompt_gate=True),
    "residual": dict(prompt_residual=True, encoder_prompt_dim=16, decoder_prompt_dim=16),
    "no_backbone_dropout": dict(no_backbone_dropout=True),
    "all": dict(prompt_gate=True, prompt_residual=True, no_backbone_dropout=True),
}


@pytest.fixture
def backbone(tmp_path, reference):
    path = tmp_path / "backbone.pt"
    shutil.copy(reference / "plain.pt", path)
    return path


@pytest.mark.parametrize("remedy", sorted(REMEDIES))
def test_exported_prompt_file_gives_the_live_models_outputs(tmp_path, reference, backbone, remedy):
    ckpt, out = tmp_path / "checkpoint_best.pt", tmp_path / "prompts.safetensors"
    live = write_prompt_checkpoint(reference, backbone, ckpt, **REMEDIES[remedy]).eval()
    prompt_file_cli(["export", str(ckpt), str(out)])
    kv, meta = load_prompt_file(str(out))
    gated = REMEDIES[remedy].get("prompt_gate", False)
    assert all(len(prefix) == (3 if gated else 2) for side in kv.values() for prefix in side.values())
    assert meta["sides"]["encoder"].get("gated", False) == gated
    model = load_model(str(backbone), {"bpe_dir": str(reference)})
    attach_prompts(model, str(out))
    case = io(reference, "plain")
    expected = logits_of(live, case)
    assert (logits_of(model, case) - expected).abs().max() < 1e-4
    assert (logits_of(load_model(str(ckpt)), case) - expected).abs().max() < 1e-4  # the checkpoint itself too


def test_merged_gated_prompts_give_the_live_models_outputs(tmp_path, reference, backbone):
    ckpt, out, merged = tmp_path / "checkpoint_best.pt", tmp_path / "p.safetensors", tmp_path / "merged.pt"
    live = write_prompt_checkpoint(reference, backbone, ckpt, **REMEDIES["all"]).eval()
    prompt_file_cli(["export", str(ckpt), str(out)])
    prompt_file_cli(["merge", "--backbone", str(backbone), "--prompts", str(out), "--out", str(merged)])
    model = load_model(str(merged), {"bpe_dir": str(reference)})
    assert model.encoder.encoder_prompt_encoder.residual is None and model.cfg.prompt_gate  # folded, gate kept
    case = io(reference, "plain")
    assert (logits_of(model, case) - logits_of(live, case)).abs().max() < 1e-4


def test_gated_prompt_file_starts_a_gated_prompt_and_is_refused_by_an_ungated_one(tmp_path, reference, backbone):
    from ofa_prompt.models.prompt_init import init_prompts

    ckpt, out = tmp_path / "checkpoint_best.pt", tmp_path / "p.safetensors"
    live = write_prompt_checkpoint(reference, backbone, ckpt, prompt_gate=True).eval()
    prompt_file_cli(["export", str(ckpt), str(out)])
    kv, _ = load_prompt_file(str(out))
    fresh = load_model(str(backbone), {"bpe_dir": str(reference), **PROMPTS, "encoder_prompt_length": 8,
                                       "decoder_prompt_length": 8, "prompt_gate": True})
    init_prompts(fresh, str(out), prompt_file=kv)
    case = io(reference, "plain")
    assert (logits_of(fresh.eval(), case) - logits_of(live, case)).abs().max() < 1e-4
    ungated = load_model(str(backbone), {"bpe_dir": str(reference), **PROMPTS, "encoder_prompt_length": 8,
                                         "decoder_prompt_length": 8})
    with pytest.raises(ValueError, match="gated .* without --prompt-gate"):
        init_prompts(ungated, str(out), prompt_file=kv)


@pytest.mark.slow
def test_fairseq_train_with_every_remedy_then_export(tmp_path, reference):
    """The options as fairseq-train flags: the gate and the residual MLP train (they leave zero / their start) and
    the exported prompt file reproduces the trained checkpoint's outputs."""
    import tiny_data
    from test_training import run, train_args

    data = tiny_data.reference_captions(tmp_path / "caption.tsv")
    run(train_args(data, reference, tmp_path, "--restore-file", str(reference / "plain.pt"), "--reset-optimizer",
                   "--reset-dataloader", "--reset-meters", "--batch-size", "4", "--max-update", "3", "--prompt-gate",
                   "--prompt-residual", "--encoder-prompt-dim", "16", "--decoder-prompt-dim", "16",
                   "--no-backbone-dropout", "--dropout", "0.3"))
    ckpt, out = tmp_path / "checkpoint_last.pt", tmp_path / "p.safetensors"
    trained = load_model(str(ckpt), {"bpe_dir": str(reference)}).eval()
    assert trained.cfg.prompt_gate and trained.cfg.prompt_residual and trained.cfg.no_backbone_dropout
    assert all(g.abs().min() > 0 for g in _gates(trained))  # the gates left zero: they trained
    prompt_file_cli(["export", str(ckpt), str(out)])
    model = load_model(str(reference / "plain.pt"), {"bpe_dir": str(reference)})
    attach_prompts(model, str(out))
    case = io(reference, "plain")
    assert (logits_of(model, case) - logits_of(trained, case)).abs().max() < 1e-4


@pytest.mark.parametrize("change, complaint", [
    (lambda meta, tensors: meta["sides"]["encoder"].update(gated="yes"), "'gated' must be true or false"),
    (lambda meta, tensors: tensors.pop("encoder.0.gate"), "tensor 'encoder.0.gate' listed in its metadata is missing"),
    (lambda meta, tensors: tensors.update({"encoder.1.gate": torch.zeros(3)}), r"layer\(s\) \[1\] are not of shape"),
])
def test_malformed_gated_prompt_files_are_named(tmp_path, reference, backbone, change, complaint):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    ckpt, out, bad = tmp_path / "checkpoint_best.pt", tmp_path / "p.safetensors", tmp_path / "bad.safetensors"
    write_prompt_checkpoint(reference, backbone, ckpt, prompt_gate=True)
    prompt_file_cli(["export", str(ckpt), str(out)])
    with safe_open(str(out), framework="pt") as f:
        meta = json.loads(f.metadata()["ofa_prompt"])
    tensors = load_file(str(out))
    change(meta, tensors)
    save_file(tensors, str(bad), metadata={"ofa_prompt": json.dumps(meta)})
    with pytest.raises(ValueError, match=complaint) as e:
        load_prompt_file(str(bad))
    assert str(bad) in str(e.value)
