"""--prompt-init: prompts that start from what the frozen backbone computes for real tokens."""
import pytest
import torch

from conftest import build_micro
from ofa_prompt.models.prompt_init import init_prompts, sample_tokens

PROMPTS = dict(encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=5, decoder_prompt_length=5)


def captured_keys(model, run):
    """Keys each encoder/decoder self-attention computes during `run`, as [heads, T, head_dim]."""
    seen, hooks = {}, []

    def keep(key, attn):
        def hook(module, inputs, output):
            seen.setdefault(key, attn._heads(output)[0])  # returns None: the output stays as it is
        return hook

    for side in ("encoder", "decoder"):
        for idx, layer in enumerate(getattr(model, side).layers):
            hooks.append(layer.self_attn.k_proj.register_forward_hook(keep((side, idx), layer.self_attn)))
    run()
    for h in hooks:
        h.remove()
    return seen


@torch.no_grad()
def test_activations_are_the_backbones_own_keys():
    model = build_micro(**PROMPTS).eval()
    init_prompts(model, "activations", seed=3)
    tokens = sample_tokens(model.encoder.dictionary, 5, seed=3)[None]
    # the same token sequence through the model *without* prompts gives the keys the prompts copied
    plain = build_micro().eval()
    plain.load_state_dict({k: v for k, v in model.full_state_dict().items() if "_prompt_encoder" not in k})

    def run():
        enc = plain.encoder(tokens, src_lengths=torch.tensor([5]))
        plain.decoder(tokens, encoder_out=enc)

    seen = captured_keys(plain, run)
    for side in ("encoder", "decoder"):
        kv = getattr(model, side).__getattr__(f"{side}_prompt_encoder")(batch_size=1)
        for idx in range(2):
            assert torch.allclose(kv[idx][0][0], seen[(side, idx)], atol=1e-5)


@torch.no_grad()
def test_vocab_init_projects_token_embeddings():
    model = build_micro(**PROMPTS).eval()
    init_prompts(model, "vocab", seed=0)
    tokens = sample_tokens(model.encoder.dictionary, 5, seed=0)
    layer = model.encoder.layers[1]
    embedded = model.encoder.embed_tokens(tokens)[None]
    expected = layer.self_attn._heads(layer.self_attn.v_proj(layer.self_attn_layer_norm(embedded)))[0]
    assert torch.allclose(model.encoder.encoder_prompt_encoder(batch_size=1)[1][1][0], expected, atol=1e-6)
    assert (tokens >= model.encoder.dictionary.nspecial).all()


def test_activations_needs_a_plain_table():
    model = build_micro(**PROMPTS, encoder_prompt_projection=True, decoder_prompt_projection=True, encoder_prompt_dim=8,
                        decoder_prompt_dim=8)
    with pytest.raises(ValueError, match="without --\\*-prompt-projection"):
        init_prompts(model, "activations")
    init_prompts(model, "vocab")  # the MLP input starts from token embeddings instead
    tokens = sample_tokens(model.encoder.dictionary, 5, seed=0)
    assert torch.equal(model.encoder.encoder_prompt_encoder.embedding.weight, model.encoder.embed_tokens.weight[tokens])


def test_only_fresh_prompts_are_initialized(reference):
    from ofa_prompt import load_model

    loaded = load_model(str(reference / "prompt.pt"), {"bpe_dir": str(reference)})
    assert loaded.fresh_prompts is False  # prompts from a checkpoint are never overwritten
    started = load_model(str(reference / "plain.pt"), {"bpe_dir": str(reference), "encoder_prompt": True})
    assert started.fresh_prompts is True


def test_a_prompt_file_is_the_starting_point(tmp_path):
    """--prompt-init FILE: the new prompts start as the file's keys/values (tuned on another task, or on the
    pretraining mix), which must fit their layers and length."""
    from ofa_prompt.models.prompt import fold
    from ofa_prompt.prompt_file import load_prompt_file

    prompted = dict(encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=3, decoder_prompt_length=5)
    source = tmp_path / "source.safetensors"
    torch.manual_seed(7)
    tuned = build_micro(**prompted)
    save_prompt_file(tuned, prompted, tmp_path, source)
    kv = load_prompt_file(str(source))[0]
    torch.manual_seed(0)
    model = build_micro(**prompted)
    init_prompts(model, str(source), prompt_file=kv)
    for side, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        for layer, (k, v) in fold(stack.prompts).items():
            assert torch.allclose(k, kv[side][layer][0]) and torch.allclose(v, kv[side][layer][1])
    longer = build_micro(**{**prompted, "decoder_prompt_length": 6})
    with pytest.raises(ValueError, match=r"decoder prompts are \[heads, length, head_dim\] = \[4, 5, 16\]"):
        init_prompts(longer, str(source), prompt_file=kv)
    with pytest.raises(ValueError, match="no reparameterization MLP"):
        init_prompts(build_micro(**prompted, encoder_prompt_projection=True), str(source), prompt_file=kv)
    with pytest.raises(ValueError, match="no decoder prompts"):
        init_prompts(model, str(source), prompt_file={"encoder": kv["encoder"]})


def save_prompt_file(model, prompted, folder, out):
    from conftest import micro_args
    from ofa_prompt.prompt_file import export_prompts

    args = {**vars(micro_args(**prompted)), "_name": "ofa_prompt_tiny"}
    torch.save({"args": None, "model": model.state_dict(), "extra_state": {}, "optimizer_history": [],
                "cfg": {"model": args, "task": {"_name": "caption"}}}, folder / "source.pt")
    export_prompts(str(folder / "source.pt"), str(out))
