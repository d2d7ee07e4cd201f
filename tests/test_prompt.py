"""Prompt layout, depth selection and incremental decoding with prompts."""
import pytest
import torch

from conftest import build_micro, micro_batch
from ofa_prompt.models.prompt import PromptEncoder, parse_prompt_layers


@pytest.mark.parametrize("spec, expected", [
    ("all", [0, 1, 2, 3]), ("bottom-1", [0]), ("top-2", [2, 3]), ("3,1", [1, 3]), ("0", [0]),
])
def test_parse_prompt_layers(spec, expected):
    assert parse_prompt_layers(spec, 4, "encoder-prompt-layers") == expected


@pytest.mark.parametrize("spec, words", [
    ("5", "layer(s) [5] do not exist"), ("top-9", "between 1 and"), ("middle", "expected 'all'"),
    ("bottom-0", "between 1"),
])
def test_parse_prompt_layers_errors_name_the_option(spec, words):
    with pytest.raises(ValueError, match="encoder-prompt-layers") as e:
        parse_prompt_layers(spec, 4, "encoder-prompt-layers")
    assert words in str(e.value)


def test_slicing_follows_ofa_column_layout():
    """Column ((2*i + s) * heads + h) * head_dim + d is slot s of the i-th prompted layer, head h."""
    dim, heads, length = 8, 2, 3
    enc = PromptEncoder(length, dim, heads, layers=[1, 3]).eval()
    kv = enc(batch_size=1)
    table = enc.embedding.weight
    hd = dim // heads
    for i, layer in enumerate([1, 3]):
        for s in range(2):
            for h in range(heads):
                col = ((2 * i + s) * heads + h) * hd
                assert torch.equal(kv[layer][s][0, h], table[:, col:col + hd])
    assert sorted(kv) == [1, 3]


def test_depth_selection_only_prompts_chosen_layers():
    model = build_micro(encoder_prompt=True, encoder_prompt_length=4, encoder_prompt_layers="top-1",
                        decoder_prompt=True, decoder_prompt_length=5, decoder_prompt_layers="0")
    enc, dec = model.encoder.encoder_prompt_encoder, model.decoder.decoder_prompt_encoder
    assert enc.embedding.weight.shape == (4, 1 * 2 * 64) and enc.layers == [1]
    assert dec.embedding.weight.shape == (5, 1 * 2 * 64) and dec.layers == [0]
    model.eval()
    batch = micro_batch(model)
    with torch.no_grad():
        base, _ = model(**batch)
        # the encoder prompt of layer 1 matters; changing the decoder prompt table changes the output too
        enc.embedding.weight.add_(1.0)
        moved, _ = model(**batch)
    assert (base - moved).abs().max() > 1e-3


def _incremental(model, batch, steps, reorder=None, enc=None):
    """Decode `steps` tokens one at a time (the encoder output `enc`, else the encoder's on the batch)."""
    if enc is None:
        enc = model.encoder(batch["src_tokens"], batch["src_lengths"], patch_images=batch["patch_images"],
                            patch_masks=batch["patch_masks"])
    state, rows, prev = {}, [], batch["prev_output_tokens"]
    for t in range(1, steps + 1):
        if reorder is not None and t > 1:
            model.decoder.reorder_incremental_state_scripting(state, reorder)
            enc = model.encoder.reorder_encoder_out(enc, reorder)
            prev = prev.index_select(0, reorder)
            rows = [r.index_select(0, reorder) for r in rows]
        logits, _ = model.decoder(prev[:, :t], encoder_out=enc, incremental_state=state)
        rows.append(logits[:, 0])
    return torch.stack(rows, 1), prev


@pytest.mark.parametrize("proj", [False, True])
@torch.no_grad()
def test_incremental_equals_full_with_prompts(proj):
    model = build_micro(encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=6, decoder_prompt_length=7,
                        encoder_prompt_projection=proj, decoder_prompt_projection=proj, decoder_prompt_dim=16).eval()
    batch = micro_batch(model)
    full, _ = model(**batch)
    steps, _ = _incremental(model, batch, 5)
    assert (steps - full).abs().max() < 1e-4


@torch.no_grad()
def test_incremental_with_beam_reordering():
    """Beam search expands the batch and reorders the cache between steps: results must follow the reorder."""
    model = build_micro(encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=4,
                        decoder_prompt_length=4).eval()
    batch = micro_batch(model, bsz=2)
    beam = 3
    expand = torch.arange(2).repeat_interleave(beam)
    batch = {k: v.index_select(0, expand) for k, v in batch.items()}
    # give every beam its own continuation so that a wrong reorder is visible
    batch["prev_output_tokens"][:, 1:] = torch.randint(4, 300, (6, 4), generator=torch.Generator().manual_seed(1))
    reorder = torch.tensor([2, 0, 1, 5, 5, 3])  # within-sentence permutation, one beam duplicated
    steps, prev = _incremental(model, batch, 5, reorder=reorder)
    # Reordering before step t applies to all earlier steps, so the final order is `reorder` applied (t-1) times.
    full, _ = model(**{**batch, "prev_output_tokens": prev})
    assert (steps[:, -1] - full[:, -1]).abs().max() < 1e-4


@torch.no_grad()
def test_beam_copies_of_encoder_rows_are_projected_once_and_moved_only_across_sentences():
    """Beam search copies each sentence's encoder row once per beam (reorder_encoder_out) and reorders the rows
    within sentences at every step: the copies' keys are computed once per sentence, and a reorder within
    sentences moves nothing; decoding gives what an encoder run on the copied batch gives."""
    model = build_micro(encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=4,
                        decoder_prompt_length=4).eval()
    batch = micro_batch(model, bsz=2)
    beam = 3
    expand = torch.arange(2).repeat_interleave(beam)
    copied = {k: v.index_select(0, expand) for k, v in batch.items()}
    copied["prev_output_tokens"][:, 1:] = torch.randint(4, 300, (6, 4), generator=torch.Generator().manual_seed(1))
    reorder = torch.tensor([2, 0, 1, 5, 5, 3])  # within sentences
    expected, _ = _incremental(model, copied, 5, reorder=reorder)

    enc = model.encoder(batch["src_tokens"], batch["src_lengths"], patch_images=batch["patch_images"],
                        patch_masks=batch["patch_masks"])
    enc = model.encoder.reorder_encoder_out(enc, expand)
    assert enc["row_source"][0].tolist() == expand.tolist()
    within = model.encoder.reorder_encoder_out(enc, reorder)
    assert within["encoder_out"][0] is enc["encoder_out"][0]  # nothing moved: the rows are copies
    across = model.encoder.reorder_encoder_out(enc, torch.tensor([3, 4, 5, 0, 1, 2]))
    assert across["row_source"][0].tolist() == [1, 1, 1, 0, 0, 0]
    assert torch.equal(across["encoder_out"][0][:, 0], enc["encoder_out"][0][:, 3])
    projected = []
    model.decoder.layers[0].encoder_attn.k_proj.register_forward_hook(lambda m, args, out: projected.append(len(out)))
    steps, _ = _incremental(model, copied, 5, reorder=reorder, enc=enc)
    assert projected == [2]  # once, at the first step, for the two sentences
    assert (steps - expected).abs().max() < 1e-5
