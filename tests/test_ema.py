"""The EMA (--store-ema --ema-decay --ema-fp32 --ema-start-update --ema-update-freq) under every tuning method:
the saved EMA is the moving average of the saved live weights, a resumed run keeps it, validation under
--uses-ema generates with it, and fairseq-generate --ema-eval scores it."""
import logging
import shutil
import subprocess

import pytest
import torch
from fairseq.dataclass.configs import EMAConfig

import tiny_data
from conftest import BIN, MICRO_CLI, build_micro, reference_caption_args as task_args, run
from ofa_prompt.checkpoint import BACKBONE_KEY, prompt_only_checkpoint, read_checkpoint
from ofa_prompt.tasks.ema import OFAEMA, decay_at, ema_plan, ema_update_, update_due
from ofa_prompt.tasks.saved_settings import SettingsError

DECAY = 0.9
PROMPTS = ["--encoder-prompt", "--decoder-prompt", "--encoder-prompt-length", "8", "--decoder-prompt-length", "8"]
METHOD_FLAGS = {"prompt": PROMPTS, "adapter": ["--adapter", "--adapter-dim", "8"], "bitfit": ["--bitfit"],
                "finetune": []}


def ema_config(**changes):
    return EMAConfig(**{"store_ema": True, "ema_decay": DECAY, **changes})


def hand_ema(previous, live, decay=DECAY):
    """fairseq's EMA step, written out: decay * EMA + (1 - decay) * live."""
    return decay * previous + (1 - decay) * live


def close(a, b):
    return torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6)


# --- the maths ----------------------------------------------------------------------------------------
def test_ema_update_is_the_decayed_average():
    average, value = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 4.0])
    assert torch.allclose(ema_update_(average, value, 0.9), torch.tensor([0.1, 2.2]))
    assert torch.equal(average, torch.tensor([0.1, 2.2]))  # in place
    nan = torch.tensor([float("nan")])
    assert torch.equal(ema_update_(nan, torch.tensor([3.0]), 0.0), torch.tensor([3.0]))  # decay 0: a copy
    half = torch.zeros(2, dtype=torch.float16)
    assert ema_update_(half, torch.ones(2), 0.5).dtype == torch.float16


def test_decay_schedule_and_update_frequency():
    assert [decay_at(n, 0.9, 3) for n in (1, 2, 3, 4)] == [0.0, 0.0, 0.9, 0.9]  # fairseq: copy before the start
    assert [n for n in range(1, 10) if update_due(n, 3)] == [3, 6, 9]
    assert all(update_due(n, 1) for n in range(1, 5))


# --- what the EMA averages ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["prompt", "adapter", "bitfit", "finetune"])
def test_the_ema_averages_what_trains_and_shares_the_frozen_rest(method):
    flags = {"prompt": dict(encoder_prompt=True, encoder_prompt_length=2), "adapter": dict(adapter=True, adapter_dim=8),
             "bitfit": dict(bitfit=True), "finetune": {}}[method]
    model = build_micro(**flags)
    averaged, copied = ema_plan(model)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    ema = OFAEMA(model, ema_config())
    own, live = ema.model.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
    if method == "finetune":
        assert set(averaged) >= trained and any(k.endswith("running_mean") for k in averaged)
        assert copied and all(k.endswith("num_batches_tracked") for k in copied)
        # the tied embeddings (encoder, decoder, output projection): one tensor, averaged once
        tied = [k for k in live if k.endswith("embed_tokens.weight") or k.endswith("output_projection.weight")]
        assert len(tied) == 3 and sum(k in averaged for k in tied) == 1
        assert own[tied[0]] is own[tied[1]] is own[tied[2]] and own[tied[0]] is not live[tied[0]]
    else:
        assert set(averaged) == trained and trained and not copied
        frozen = [k for k in live if k not in trained]
        assert all(own[k] is live[k] for k in frozen)  # shared: the EMA holds no copy of the backbone
    assert all(own[k] is not live[k] and not own[k].requires_grad for k in averaged)


def test_a_prompt_that_moves_by_one_moves_the_ema_by_one_tenth():
    """The reported bug: with a frozen backbone the EMA followed the live prompts exactly."""
    model = build_micro(encoder_prompt=True, encoder_prompt_length=2)
    key = "encoder.encoder_prompt_encoder.embedding.weight"
    ema = OFAEMA(model, ema_config(ema_fp32=True))
    start = model.state_dict()[key].clone()
    with torch.no_grad():
        model.state_dict()[key].add_(1.0)
    ema.step(model, updates=1)
    assert torch.allclose(ema.model.state_dict()[key], start + 0.1, atol=1e-6)
    assert set(ema.fp32_params) == {key} and torch.allclose(ema.fp32_params[key], start + 0.1, atol=1e-6)


def test_start_update_and_update_freq_count_updates():
    model = build_micro(encoder_prompt=True, encoder_prompt_length=2)
    key = "encoder.encoder_prompt_encoder.embedding.weight"
    prompt = model.encoder.encoder_prompt_encoder.embedding.weight
    ema = OFAEMA(model, ema_config(ema_start_update=3, ema_update_freq=2))
    expected = prompt.detach().clone()
    for n in range(1, 7):
        with torch.no_grad():
            prompt.add_(1.0)
        ema.step(model, updates=n)
        if n % 2 == 0:  # moves at updates 2, 4, 6; a copy before update 3
            expected = prompt.detach().clone() if n < 3 else hand_ema(expected, prompt.detach())
        assert close(ema.model.state_dict()[key], expected), n
    assert ema.get_decay() == DECAY


def test_finetune_ema_of_a_half_model_averages_in_float32():
    """--ema-fp32 with a float16 model (fairseq-train --fp16): the average is kept in float32, the EMA model
    gets it rounded; BatchNorm's integer counters are copied."""
    model = build_micro().half()
    ema = OFAEMA(model, ema_config(ema_fp32=True))
    key, counter = "encoder.layers.0.fc1.weight", ema.copied[0]
    start = ema.fp32_params[key].clone()
    assert start.dtype == torch.float32 and ema.model.state_dict()[key].dtype == torch.float16
    with torch.no_grad():
        model.state_dict()[key].add_(0.001)
        model.state_dict()[counter].add_(5)
    ema.step(model, updates=1)
    assert torch.allclose(ema.fp32_params[key], hand_ema(start, model.state_dict()[key].float()), atol=1e-6)
    assert torch.equal(ema.model.state_dict()[key], ema.fp32_params[key].half())
    assert int(ema.model.state_dict()[counter]) == int(model.state_dict()[counter]) == 5


def test_restore_and_the_legacy_ema_without_prompts(caplog):
    model = build_micro(encoder_prompt=True, encoder_prompt_length=2)
    key = "encoder.encoder_prompt_encoder.embedding.weight"
    ema = OFAEMA(model, ema_config())
    saved = torch.full_like(model.state_dict()[key], 0.5)
    ema.restore({key: saved, BACKBONE_KEY: {"sha256": "x"}})
    assert torch.equal(ema.model.state_dict()[key], saved)
    with caplog.at_level(logging.WARNING):
        ema.restore({BACKBONE_KEY: {"sha256": "x"}})  # what earlier versions saved: the record, no prompts
    assert "the EMA state lacks 1 trained tensors" in caplog.text
    with pytest.raises(ValueError, match=f"{key} has shape \\[1, 64\\]"):
        ema.restore({key: torch.zeros(1, 64), BACKBONE_KEY: {}})
    reversed_into = build_micro(encoder_prompt=True, encoder_prompt_length=2)
    assert torch.equal(ema.reverse(reversed_into).state_dict()[key], saved)


def test_the_writer_selects_the_ema_by_the_live_models_trained_tensors(tmp_path):
    backbone = tmp_path / "backbone.pt"
    backbone.write_bytes(b"stands for the backbone file")
    model = build_micro(encoder_prompt=True, encoder_prompt_length=2, backbone=str(backbone))
    ema = OFAEMA(model, ema_config())
    assert model.state_dict().keys() == ema.model.state_dict().keys()  # state_dict() is the whole one
    saved = prompt_only_checkpoint(model, {"model": model.state_dict(),
                                           "extra_state": {"ema": ema.get_model().state_dict()}})
    tuned = {"encoder.encoder_prompt_encoder.embedding.weight", BACKBONE_KEY}
    assert set(saved["model"]) == tuned and set(saved["extra_state"]["ema"]) == tuned


# --- through fairseq: the reference backbone, a caption TSV in its words --------------------------------
@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    return tiny_data.reference_captions(tmp_path_factory.mktemp("ema_data") / "caption.tsv")


def train_args(captions, reference, save_dir, *extra):
    """fairseq-train's arguments: the micro model from the reference backbone, batches of 2 (5 updates per
    epoch, so that every update writes checkpoint_1_<n>.pt), the EMA with decay 0.9."""
    return [f"{captions},{captions}", *task_args(reference), *MICRO_CLI,
            "--criterion", "adjust_label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "0.03",
            "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1",
            "--disable-validation", "--seed", "3", "--save-dir", str(save_dir), "--batch-size", "2",
            "--finetune-from-model", str(reference / "plain.pt"), "--store-ema", "--ema-decay", str(DECAY), *extra]


def saved(folder, updates):
    """(live, EMA, fp32 EMA) state dicts of the checkpoints after 1..updates."""
    out = []
    for n in range(1, updates + 1):
        state = read_checkpoint(str(folder / f"checkpoint_1_{n}.pt"))
        out.append((state["model"], state["extra_state"]["ema"], state["extra_state"].get("ema_fp32_params")))
    return out


@pytest.fixture(scope="module")
def prompt_run(captions, reference, tmp_path_factory):
    """fairseq-train: prompt tuning, 4 updates, the EMA in float32 from update 2 (a copy at update 1)."""
    folder = tmp_path_factory.mktemp("prompt_run")
    run([f"{BIN}/fairseq-train", *train_args(captions, reference, folder, *PROMPTS, "--max-update", "4",
                                             "--save-interval-updates", "1", "--ema-fp32", "--ema-start-update", "2",
                                             "--no-save-optimizer-state")])
    return folder


@pytest.mark.slow
def test_fairseq_train_saves_the_moving_average_of_the_prompts(prompt_run):
    states = saved(prompt_run, 4)
    keys = {"encoder.encoder_prompt_encoder.embedding.weight", "decoder.decoder_prompt_encoder.embedding.weight"}
    for live, ema, fp32 in states:
        assert set(live) == set(ema) == keys | {BACKBONE_KEY} and set(fp32) == keys  # prompt-only, prompts in
        assert ema[BACKBONE_KEY] == live[BACKBONE_KEY]
        assert all(torch.equal(fp32[k], ema[k]) for k in keys)
    first_live, first_ema, _ = states[0]
    assert all(torch.equal(first_ema[k], first_live[k]) for k in keys)  # before --ema-start-update: a copy
    for (_, previous, _), (live, ema, _) in zip(states, states[1:]):
        for k in keys:
            assert close(ema[k], hand_ema(previous[k], live[k])), k
            assert (ema[k] - live[k]).abs().max() > 1e-3  # and not the live prompts


def trainer_for(tmp_path, captions, reference, *flags):
    """fairseq's Trainer in this process, from the reference backbone as fairseq-train loads it (the EMA is
    re-initialized from a checkpoint without EMA state), with the task's training set."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    # without optimizer state, the checkpoints of a finetuned model are a third of the size
    args = options.parse_args_and_arch(options.get_training_parser(), [
        *train_args(captions, reference, tmp_path, *flags), "--cpu", "--no-save-optimizer-state"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    trainer.load_checkpoint(str(reference / "plain.pt"), reset_optimizer=True, reset_lr_scheduler=True,
                            reset_meters=True)
    task.load_dataset("train")
    ds = task.datasets["train"]
    batches = [ds.collater([ds[2 * i], ds[2 * i + 1]]) for i in range(len(ds) // 2)]
    return trainer, task, model, batches


@pytest.mark.slow
@pytest.mark.parametrize("method, fp32", [("adapter", False), ("bitfit", True), ("finetune", False)])
def test_every_tuning_method_saves_the_moving_average(tmp_path, captions, reference, method, fp32):
    trainer, _, model, batches = trainer_for(tmp_path, captions, reference, *METHOD_FLAGS[method],
                                             *(["--ema-fp32"] if fp32 else []))
    assert model.tuning == method
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    states = []
    for n in range(4):  # the loaded weights, then 3 updates
        if n:
            trainer.train_step([batches[n - 1]])
        trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint does first
        trainer.save_checkpoint(str(tmp_path / f"after_{n}.pt"), {})
        state = read_checkpoint(str(tmp_path / f"after_{n}.pt"))
        states.append((state["model"], state["extra_state"]["ema"], state["extra_state"].get("ema_fp32_params")))
    live, ema, _ = states[0]
    if method == "finetune":
        assert BACKBONE_KEY not in ema and len(ema) == len(live) > 100  # whole checkpoints
        keys = [k for k, v in ema.items() if v.is_floating_point() and not k.endswith("version")]
        assert {"decoder.output_projection.weight", "encoder.embed_images.bn1.running_mean"} <= set(keys)
    else:
        assert set(ema) == set(live) == trained | {BACKBONE_KEY}  # prompt-only: the tuned tensors
        keys = sorted(trained)
    assert all(torch.equal(ema[k], live[k]) for k in keys)  # the EMA starts from the loaded model
    for (_, previous, _), (live, ema, fp32) in zip(states, states[1:]):
        for k in keys:
            assert close(ema[k], hand_ema(previous[k], live[k])), k
        if fp32:
            assert set(fp32) == set(keys) and all(torch.equal(fp32[k], ema[k]) for k in keys)
        if method == "finetune":  # the integer BatchNorm counters are copied
            assert torch.equal(ema["encoder.embed_images.bn1.num_batches_tracked"],
                               live["encoder.embed_images.bn1.num_batches_tracked"])
    moved = [k for k in keys if (states[-1][1][k] - states[-1][0][k]).abs().max() > 1e-4]
    assert moved  # the EMA lags behind the live weights


@pytest.mark.slow
def test_a_resumed_run_keeps_its_ema(captions, reference, tmp_path):
    """Stopped after update 1 and resumed to 4 equals the uninterrupted run, with the EMA in float32 moving
    every 3 updates (counted on the update number: a resumed run moves at update 3 too)."""
    args = [*PROMPTS, "--max-update", "4", "--save-interval-updates", "1", "--ema-fp32", "--ema-update-freq", "3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run([f"{BIN}/fairseq-train", *train_args(captions, reference, straight, *args)])
    resumed.mkdir()
    shutil.copy(straight / "checkpoint_1_1.pt", resumed / "checkpoint_last.pt")  # a run stopped after update 1
    log = run([f"{BIN}/fairseq-train", *train_args(captions, reference, resumed, *args)])
    assert "@ 1 updates" in log and "Loading EMA fp32 params from checkpoint" in log
    a, b = read_checkpoint(str(straight / "checkpoint_last.pt")), read_checkpoint(str(resumed / "checkpoint_last.pt"))
    keys = {"encoder.encoder_prompt_encoder.embedding.weight", "decoder.decoder_prompt_encoder.embedding.weight"}
    for name in ("ema", "ema_fp32_params"):
        assert all(torch.equal(a["extra_state"][name][k], b["extra_state"][name][k]) for k in keys)
    states = saved(straight, 4)
    for k in keys:
        assert torch.equal(states[0][1][k], states[1][1][k])  # updates 1, 2: not due
        assert close(states[2][1][k], hand_ema(states[1][1][k], states[2][0][k]))  # update 3
        assert torch.equal(states[3][1][k], states[2][1][k])


@pytest.mark.slow
def test_validation_with_uses_ema_generates_with_the_ema(tmp_path, captions, reference):
    trainer, task, model, batches = trainer_for(tmp_path, captions, reference, *PROMPTS, "--uses-ema", "--eval-cider",
                                                "--eval-args", '{"beam": 2, "max_len_b": 4}')
    key = "encoder.encoder_prompt_encoder.embedding.weight"
    expected = model.state_dict()[key].clone()  # the EMA starts from the loaded model
    for batch in batches[:3]:
        trainer.train_step([batch])
        expected = hand_ema(expected, model.state_dict()[key])
    generated_with = []
    original = task.generate
    task.generate = lambda generator, models, sample: generated_with.append(models[0]) or original(
        generator, models, sample)
    trainer.valid_step(batches[3])
    ema_model = trainer.ema.get_model()
    assert generated_with == [ema_model] and ema_model is not model
    assert close(ema_model.state_dict()[key], expected)
    assert (ema_model.state_dict()[key] - model.state_dict()[key]).abs().max() > 1e-3


def test_ema_eval_is_refused_by_fairseq_train(tmp_path, captions, reference):
    with pytest.raises(SettingsError, match="--ema-eval evaluates a checkpoint's EMA weights in fairseq-generate"):
        trainer_for(tmp_path, captions, reference, *PROMPTS, "--ema-eval")


# --- fairseq-generate --ema-eval ----------------------------------------------------------------------
def test_ema_eval_reads_the_checkpoints_of_path_in_order():
    from omegaconf import OmegaConf

    from ofa_prompt.tasks.ema import generate_checkpoint

    root = OmegaConf.create({"common_eval": {"path": "a/one.pt:b/two.pt"},
                             "checkpoint": {"checkpoint_suffix": "-s", "checkpoint_shard_count": 1},
                             "task": {"ema_eval": True}})
    assert [generate_checkpoint(root.task, i) for i in (0, 1)] == ["a/one-s.pt", "b/two-s.pt"]  # fairseq's naming
    with pytest.raises(SettingsError, match="--path names 2"):
        generate_checkpoint(root.task, 2)
    root.common_eval.path = None
    with pytest.raises(SettingsError, match="needs the checkpoints as fairseq-generate's --path"):
        generate_checkpoint(root.task, 0)


def hypotheses(captions, reference, path, *extra):
    """fairseq-generate's H- lines (sample id, score, hypothesis) for checkpoint `path`."""
    out = run([f"{BIN}/fairseq-generate", str(captions), *task_args(reference), "--path", str(path),
               "--gen-subset", "test", "--beam", "2", "--max-len-b", "3", "--batch-size", "10", *extra])
    return sorted(line for line in out.splitlines() if line.startswith("H-"))


@pytest.mark.slow
def test_ema_eval_scores_the_checkpoints_ema_weights(prompt_run, captions, reference, tmp_path):
    ckpt = prompt_run / "checkpoint_last.pt"
    state = read_checkpoint(str(ckpt))
    state["model"] = state["extra_state"]["ema"]  # the EMA weights as a checkpoint's own
    ema_as_model = tmp_path / "ema_as_model.pt"
    torch.save(state, ema_as_model)
    live, with_ema = hypotheses(captions, reference, ckpt), hypotheses(captions, reference, ckpt, "--ema-eval")
    assert len(live) == len(with_ema) == 10
    assert with_ema != live  # --ema-eval changes the weights that are scored ...
    assert with_ema == hypotheses(captions, reference, ema_as_model)  # ... to the EMA's


@pytest.mark.slow
def test_ema_eval_of_a_checkpoint_without_ema_names_the_file(captions, reference):
    path = reference / "prompt.pt"  # an official checkpoint: no EMA state
    p = subprocess.run([f"{BIN}/fairseq-generate", str(captions), *task_args(reference), "--path", str(path),
                        "--gen-subset", "test", "--ema-eval"], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert f"--ema-eval: {path} holds no EMA weights" in p.stderr and "--store-ema" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
