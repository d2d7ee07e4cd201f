"""The criterion: OFA's label smoothing and masking, and its guard against non-finite losses."""
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import build_micro, micro_batch
from ofa_prompt.criterions.label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropy, label_smoothed_nll_loss


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


def test_training_start_reports_and_enforces_the_freeze(caplog, data):
    """fairseq-train calls the task's begin_epoch after loading the checkpoint: the first call enforces the
    freeze and reports the trainable share, once."""
    import logging

    from conftest import make_task

    caplog.set_level(logging.INFO)
    model = build_micro(encoder_prompt=True, encoder_prompt_length=2).train()
    model.encoder.layers[0].fc1.weight.requires_grad_(True)  # someone unfroze a backbone tensor
    task = make_task("caption", data)
    task.begin_epoch(1, model)
    assert not model.encoder.layers[0].fc1.weight.requires_grad
    n = model.encoder.encoder_prompt_encoder.embedding.weight.numel()
    assert f"tuning method prompt: {n} of" in caplog.text
    task.begin_epoch(2, model)
    assert caplog.text.count("tuning method prompt:") == 1


@pytest.mark.slow
def test_nonfinite_loss_skips_the_update_in_a_real_trainer(tmp_path, caplog):
    """Through fairseq's Trainer: a poisoned batch changes neither the prompts nor Adam's state (Adam with
    weight decay would move them even with zero gradients), and --max-nonfinite-losses still stops."""
    import copy

    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    import tiny_data
    from conftest import MICRO, REPO

    tiny_data.write_dict(tmp_path)
    tiny_data.write(tmp_path / "caption.tsv", tiny_data.rows("caption", 8))
    micro = [x for k, v in MICRO.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(tmp_path / "caption.tsv"), "--user-dir", str(REPO / "ofa_prompt"), "--task", "caption", "--bpe-dir",
        str(tmp_path), "--text-tokenizer", "word", "--patch-image-size", "64", *micro, "--encoder-prompt",
        "--encoder-prompt-length", "2", "--criterion", "adjust_label_smoothed_cross_entropy",
        "--max-nonfinite-losses", "2", "--optimizer", "adam", "--lr", "0.01", "--weight-decay", "0.1", "--cpu",
        "--save-dir", str(tmp_path)])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    task.load_dataset("train")
    ds = task.datasets["train"]
    sample = ds.collater([ds[i] for i in range(4)])
    poisoned = copy.deepcopy(sample)
    poisoned["net_input"]["patch_images"][0, 0, 0, 0] = float("inf")

    def snapshot():
        prompts = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return prompts, copy.deepcopy(trainer.optimizer.state_dict()["state"])

    trainer.train_step([sample])  # a normal update first, so that Adam has moments to move the prompts with
    prompts, state = snapshot()
    assert prompts and state
    trainer.train_step([poisoned])
    prompts_after, state_after = snapshot()
    assert all(torch.equal(prompts[n], prompts_after[n]) for n in prompts)
    assert state.keys() == state_after.keys()
    for i in state:
        assert state[i].keys() == state_after[i].keys()
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(state_after[i][k])) for k, v in state[i].items())
    assert "batch skipped" in caplog.text and "update 2 skipped" in caplog.text
    trainer.train_step([sample])  # a good batch resets the count and updates again
    assert not torch.equal(next(iter(snapshot()[0].values())), next(iter(prompts.values())))
    trainer.train_step([poisoned])
    with pytest.raises(FloatingPointError, match="2 consecutive batches"):
        trainer.train_step([poisoned])


def test_drop_worst_starts_after_the_given_update_through_the_task_train_step():
    # fairseq's FairseqTask.train_step calls criterion(model, sample) without the update number; the task
    # must hand it over, or --drop-worst-after never passes and --drop-worst-ratio never applies
    model = build_micro(dropout=0.0)
    sample = sample_of(model)
    crit = criterion(model, drop_worst_ratio=0.5, drop_worst_after=3)
    optimizer = SimpleNamespace(backward=lambda loss: None)
    task = bare_task()
    losses = {}
    for update in (0, 3, 4):
        _, _, log = task.train_step(sample, model, crit, optimizer, update)
        losses[update] = log["loss"]
    assert losses[0] == losses[3]  # not yet: OFA drops from the update after --drop-worst-after
    assert losses[4] < losses[0]  # the worst half of the tokens dropped


def test_task_train_step_keeps_working_with_criteria_without_an_update_number():
    from fairseq.criterions.cross_entropy import CrossEntropyCriterion

    model = build_micro(dropout=0.0)
    task = bare_task()
    task.dictionary = model.decoder.dictionary
    crit = CrossEntropyCriterion(task, sentence_avg=False)  # fairseq's own: forward(model, sample, reduce=True)
    _, _, log = task.train_step(sample_of(model), model, crit, SimpleNamespace(backward=lambda loss: None), 3)
    assert math.isfinite(log["loss"])


def bare_task():
    """An OFATask without data or dictionary (train_step needs neither): fairseq's part of its set-up, and the
    per-update count OFATask.__init__ starts."""
    from fairseq.tasks import FairseqTask

    from ofa_prompt.tasks.base import OFATask

    task = OFATask.__new__(OFATask)
    FairseqTask.__init__(task, SimpleNamespace())
    task._finite_batches = 0
    return task
