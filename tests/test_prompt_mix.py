"""A batch mixing prompt sets (PromptMix): every sample computes what it computes alone with its own set."""
import pytest
import torch

from conftest import build_micro, micro_batch

HEADS, HEAD_DIM = 4, 16


def prompt_set(seed, encoder=None, decoder=None):
    """{side: {layer: (key, value)}} with random prefixes: encoder/decoder = (length, layers)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for side, spec in (("encoder", encoder), ("decoder", decoder)):
        if spec is not None:
            length, layers = spec
            out[side] = {layer: (torch.randn(HEADS, length, HEAD_DIM, generator=g),
                                 torch.randn(HEADS, length, HEAD_DIM, generator=g)) for layer in layers}
    return out


SETS = [
    prompt_set(0, encoder=(4, [0, 1]), decoder=(6, [0, 1])),
    prompt_set(1, encoder=(9, [1])),  # longer, one layer, no decoder prompts
    {},  # no prompts at all
    prompt_set(2, encoder=(2, [0]), decoder=(3, [1])),
]


def pick(batch, rows):
    return {k: v[rows] for k, v in batch.items()}


@torch.no_grad()
def test_mixed_batch_equals_each_sample_alone():
    model = build_micro().eval()
    batch = micro_batch(model, bsz=4)
    ids = torch.tensor([0, 1, 2, 3])
    model.set_prompts(SETS)
    mixed, _ = model(**batch, prompt_ids=ids)
    for row, j in enumerate(ids.tolist()):
        model.set_prompts(SETS[j])
        alone, _ = model(**pick(batch, [row]))
        assert (mixed[row] - alone[0]).abs().max() < 1e-5, f"sample {row} (prompt set {j})"


@torch.no_grad()
def test_mixed_batch_differs_from_a_single_set():
    """The ids take effect: the same rows with one set for all give other outputs."""
    model = build_micro().eval()
    batch = micro_batch(model, bsz=4)
    model.set_prompts(SETS)
    mixed, _ = model(**batch, prompt_ids=torch.tensor([0, 1, 2, 3]))
    same, _ = model(**batch, prompt_ids=torch.tensor([0, 0, 0, 0]))
    assert (mixed[0] - same[0]).abs().max() < 1e-5
    assert all((mixed[r] - same[r]).abs().max() > 1e-3 for r in (1, 2, 3))


@torch.no_grad()
def test_incremental_decoding_with_beams_follows_each_samples_set():
    """Beam search expands the batch and reorders it; the decoder's prompt sets follow through the encoder
    output (its "prompt_ids"), and the self-attention cache keeps each row's prefix mask."""
    model = build_micro().eval()
    batch = micro_batch(model, bsz=2)
    model.set_prompts(SETS)
    ids = torch.tensor([3, 0])
    beam, steps = 3, 5
    expand = torch.arange(2).repeat_interleave(beam)
    enc = model.encoder(batch["src_tokens"], patch_images=batch["patch_images"],
                        patch_masks=batch["patch_masks"], prompt_ids=ids)
    enc = model.encoder.reorder_encoder_out(enc, expand)
    prev = batch["prev_output_tokens"][expand].clone()
    prev[:, 1:] = torch.randint(4, 300, (6, prev.size(1) - 1), generator=torch.Generator().manual_seed(1))
    state, last = {}, None
    for t in range(1, steps + 1):
        last, _ = model.decoder(prev[:, :t], encoder_out=enc, incremental_state=state)
    full, _ = model(**{**pick(batch, expand), "prev_output_tokens": prev}, prompt_ids=ids[expand])
    assert (last[:, 0] - full[:, -1]).abs().max() < 1e-4
    for row in range(6):
        model.set_prompts(SETS[int(ids[expand][row])])
        alone, _ = model(**{**pick(batch, expand[row:row + 1]), "prev_output_tokens": prev[row:row + 1]})
        assert (alone[0, -1] - full[row, -1]).abs().max() < 1e-5


def test_prompt_ids_must_match_what_the_model_holds():
    model = build_micro().eval()
    batch = micro_batch(model, bsz=2)
    model.set_prompts(SETS)
    with pytest.raises(ValueError, match="prompt_ids"):
        model(**batch)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        model(**batch, prompt_ids=torch.tensor([0, 4]))
    model.set_prompts(SETS[0])
    with pytest.raises(ValueError, match="holds one"):
        model(**batch, prompt_ids=torch.tensor([0, 0]))
