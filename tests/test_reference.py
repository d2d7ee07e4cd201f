"""The plugin reproduces the official OFA implementation on its own checkpoints (../shared/ofa_reference)."""
import pytest
import torch

from ofa_prompt import load_model
from ofa_prompt.models.position import image_bucket_matrix, token_bucket_matrix

NAMES = ["plain", "prompt", "prompt_proj"]
TOL = 1e-4


def close(a, b, tol=TOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max().item() <= tol, (a - b).abs().max().item()


@pytest.fixture(scope="module", params=NAMES)
def case(request, reference):
    model = load_model(str(reference / f"{request.param}.pt"), {"bpe_dir": str(reference)})
    io = torch.load(reference / f"io_{request.param}.pt")
    return request.param, model, io


def test_bucket_buffers_match_official(reference):
    b = torch.load(reference / "buckets.pt")
    tokens = token_bucket_matrix(b["token_bucket_size"])
    assert list(tokens.shape) == b["token_rp_bucket_shape"]
    assert torch.equal(tokens[0], b["token_rp_bucket_row0"])
    assert torch.equal(tokens[:, 0], b["token_rp_bucket_col0"])
    assert torch.equal(tokens[:64, :64], b["token_rp_bucket_top_left_64"])
    image = image_bucket_matrix(b["image_bucket_size"])
    assert list(image.shape) == b["image_rp_bucket_shape"]
    ids = b["image_rp_bucket_ids"]
    assert torch.equal(image[ids][:, ids], b["image_rp_bucket_block"])


@torch.no_grad()
def test_full_forward(case):
    name, model, io = case
    inp, out = io["inputs"], io["outputs"]
    logits, extra = model(**inp)
    close(logits, out["logits"])
    close(extra["attn"][0], out["decoder_attn"])
    close(torch.stack(extra["inner_states"]), out["decoder_inner_states"])
    features, _ = model(**inp, features_only=True)
    close(features, out["decoder_features"])


@torch.no_grad()
def test_encoder(case):
    name, model, io = case
    inp, out = io["inputs"], io["outputs"]
    enc = model.encoder(inp["src_tokens"], inp["src_lengths"], patch_images=inp["patch_images"],
                        patch_masks=inp["patch_masks"], return_all_hiddens=True)
    assert torch.equal(enc["encoder_padding_mask"][0].long(), out["encoder_padding_mask"].long())
    valid = ~out["encoder_padding_mask"].bool()  # OFA's values at masked positions are arbitrary
    close(enc["encoder_out"][0].transpose(0, 1)[valid], out["encoder_out"].transpose(0, 1)[valid])
    close(enc["position_embeddings"][0], out["encoder_position_embeddings"])
    states = torch.stack(enc["encoder_states"]).transpose(1, 2)  # [L+1, B, T, C]
    close(states[:, valid], out["encoder_states"].transpose(1, 2)[:, valid])


@torch.no_grad()
def test_prompt_keys_and_values(case):
    name, model, io = case
    out = io["outputs"]
    if "encoder_prompt_kv" not in out:
        assert model.encoder.encoder_prompt_encoder is None and model.decoder.decoder_prompt_encoder is None
        return
    for side, module in (("encoder", model.encoder.encoder_prompt_encoder),
                         ("decoder", model.decoder.decoder_prompt_encoder)):
        ref = out[f"{side}_prompt_kv"]  # [layers, 2, B, H, P, hd]
        kv = module(batch_size=ref.size(2))
        ours = torch.stack([torch.stack([kv[layer][0], kv[layer][1]]) for layer in sorted(kv)])
        close(ours.expand_as(ref), ref)


@torch.no_grad()
def test_incremental_decoding(case):
    name, model, io = case
    inp, out = io["inputs"], io["outputs"]
    enc = model.encoder(inp["src_tokens"], inp["src_lengths"], patch_images=inp["patch_images"],
                        patch_masks=inp["patch_masks"])
    state = {}
    for t in range(1, io["incremental"]["n_steps"] + 1):
        logits, _ = model.decoder(inp["prev_output_tokens"][:, :t], encoder_out=enc, incremental_state=state)
        close(logits[:, 0], out["incremental_logits"][t - 1])


@torch.no_grad()
def test_text_only(case):
    name, model, io = case
    ref = io["text_only"]
    logits, extra = model(**ref["inputs"])
    close(logits, ref["outputs"]["logits"])
    close(extra["attn"][0], ref["outputs"]["decoder_attn"])
    enc = model.encoder(ref["inputs"]["src_tokens"], ref["inputs"]["src_lengths"])
    valid = ~ref["outputs"]["encoder_padding_mask"].bool()
    close(enc["encoder_out"][0].transpose(0, 1)[valid], ref["outputs"]["encoder_out"].transpose(0, 1)[valid])


def test_the_sequence_bias_is_the_image_block_the_text_block_and_zero_between():
    """The encoder's relative bias of a layer, gathered in one pass over its whole sequence (sequence_rel_bias),
    is OFA's: the image table over image pairs, the token table over text pairs, nothing between them; and the
    gradient reaches both tables (finetuning trains them)."""
    from conftest import build_micro
    from ofa_prompt.models.position import image_position_ids

    enc = build_micro().encoder
    for table in (*enc.image_rel_pos_table_list, *enc.token_rel_pos_table_list):
        torch.nn.init.normal_(table.weight)
    ids, text = image_position_ids(3, 4, enc.image_bucket_size), torch.arange(5)
    n = len(ids)
    got = enc.sequence_rel_bias(1, enc.sequence_buckets(ids, text))
    image = torch.nn.functional.embedding(enc.image_rp_bucket[ids][:, ids], enc.image_rel_pos_table_list[1].weight)
    tokens = torch.nn.functional.embedding(enc.token_rp_bucket[text][:, text], enc.token_rel_pos_table_list[1].weight)
    assert got.shape == (enc.num_heads, n + 5, n + 5)
    assert torch.equal(got[:, :n, :n], image.permute(2, 0, 1))
    assert torch.equal(got[:, n:, n:], tokens.permute(2, 0, 1))
    assert not got[:, :n, n:].any() and not got[:, n:, :n].any()
    assert torch.equal(enc.sequence_rel_bias(1, enc.sequence_buckets(None, text)), tokens.permute(2, 0, 1))
    got.sum().backward()
    assert enc.image_rel_pos_table_list[1].weight.grad.abs().sum() > 0
    assert enc.token_rel_pos_table_list[1].weight.grad.abs().sum() > 0
