"""The criterion: OFA's label smoothing and masking, and its guard against non-finite losses."""
import math
from types import SimpleNamespace

import pytest
import torch

from ofa_prompt.criterions.label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropy, label_smoothed_nll_loss

from conftest import build_micro, micro_batch


def test_label_smoothing_by_hand():
    lprobs = torch.log_softmax(torch.tensor([[2.0, 0.5, -1.0, 0.0]]), -1)
    target = torch.tensor([1])
    loss, nll = label_smoothed_nll_loss(lprobs, target, 0.1)
    eps_i = 0.1 / 3
    expected = (1 - 0.1 - eps_i) * -lprobs[0, 1] + eps_i * -lprobs[0].sum()
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-6)
    assert math.isclose(nll.item(), -lprobs[0, 1].item(), rel_tol=1e-6)
    # smoothing restricted to allowed tokens {0, 1}
    loss, _ = label_smoothed_nll_loss(lprobs, target, 0.1, torch.tensor([[True, True, False, False]]))
    eps_i = 0.1 / (2 + 1e-6 - 1)
    expected = (1 - 0.1 - eps_i) * -lprobs[0, 1] + eps_i * -(lprobs[0, 0] + lprobs[0, 1])
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)


def criterion(model, **kw):
    task = SimpleNamespace(target_dictionary=model.decoder.dictionary)
    return AdjustLabelSmoothedCrossEntropy(task, sentence_avg=False, label_smoothing=0.1, **kw)


def sample_of(model):
    batch = micro_batch(model)
    target = torch.cat([batch["prev_output_tokens"][:, 1:], torch.full((3, 1), 2)], 1)
    return {"id": torch.arange(3), "net_input": batch, "target": target, "ntokens": target.numel(), "nsentences": 3}


def test_ignore_prefix_and_padding():
    model = build_micro().eval()
    sample = sample_of(model)
    full, n_full, _ = criterion(model)(model, sample)
    skipped, n_skip, _ = criterion(model, ignore_prefix_size=2)(model, sample)
    assert n_full == 15 and n_skip == 9 and skipped < full
    sample["target"][0, -1] = 1  # a pad target is not counted
    _, n_pad, _ = criterion(model)(model, sample)
    assert n_pad == 14


def test_nonfinite_loss_is_skipped_then_stops(caplog):
    model = build_micro(encoder_prompt=True, encoder_prompt_length=2).train()
    crit = criterion(model, max_nonfinite_losses=2)
    sample = sample_of(model)
    sample["net_input"]["patch_images"][0, 0, 0, 0] = float("inf")  # poisoned input, finite parameters
    loss, _, _ = crit(model, sample)
    assert loss.item() == 0.0
    loss.backward()
    assert model.encoder.encoder_prompt_encoder.embedding.weight.grad.abs().sum() == 0
    assert "batch skipped" in caplog.text
    with pytest.raises(FloatingPointError, match="2 consecutive batches"):
        crit(model, sample)


def test_first_training_step_reports_and_enforces_the_freeze(caplog):
    import logging

    caplog.set_level(logging.INFO)
    model = build_micro(encoder_prompt=True, encoder_prompt_length=2).train()
    model.encoder.layers[0].fc1.weight.requires_grad_(True)  # someone unfroze a backbone tensor
    criterion(model)(model, sample_of(model))
    assert not model.encoder.layers[0].fc1.weight.requires_grad
    n = model.encoder.encoder_prompt_encoder.embedding.weight.numel()
    assert f"tuning method prompt: {n} of" in caplog.text
