"""OFA's --warmup-ratio with --max-epoch: the learning-rate schedule's length counted from the data, so that
OFA's epoch-based command lines start with stock fairseq (which needs --total-num-update by hand)."""
import pytest
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import tiny_data
from conftest import MICRO_CLI, common
from ofa_prompt.schedule import schedule, total_updates, updates_per_epoch


def test_updates_per_epoch_by_hand():
    assert updates_per_epoch(rows=100, batch_size=8, world_size=1, update_freq=1) == 13  # 12 full + 1 short
    assert updates_per_epoch(100, 8, 1, 4) == 4  # 13 batches -> 4 updates, the last of 1 batch
    assert updates_per_epoch(100, 8, 2, 1) == 7  # 13 batches over 2 ranks: 7 each (one padded)
    assert updates_per_epoch(100, 8, 8, 4) == 1
    assert updates_per_epoch(1, 8, 1, 1) == 1


def test_total_over_epochs_files_and_update_freq_schedules():
    assert total_updates([100] * 3, 8, 1, [1]) == 39
    assert total_updates([100, 50, 100], 8, 1, [1]) == 13 + 7 + 13  # each epoch its own file
    assert total_updates([100] * 3, 8, 1, [1, 4]) == 13 + 4 + 4  # fairseq: update_freq[epoch], then the last


def test_schedule_rules():
    assert schedule(derived_total=39, max_update=0, given_total=None, warmup_ratio=0.06, warmup_updates=0) == (39, 2)
    assert schedule(39, 10, None, 0.5, 0) == (10, 5)  # --max-update stops training first: decay over those
    assert schedule(39, 0, 500, 0.1, 0) == (500, 50)  # an explicit --total-num-update wins
    assert schedule(None, 200, None, 0.0, 20) == (200, 20)  # fairseq's default: --max-update
    with pytest.raises(ValueError, match="give one of them"):
        schedule(39, 0, None, 0.06, 100)
    with pytest.raises(ValueError, match="at least 0 and below 1"):
        schedule(39, 0, None, 1.5, 0)
    with pytest.raises(ValueError, match="needs the number of updates to decay over: give --max-epoch"):
        schedule(None, 0, None, 0.06, 0)


def fairseq_train_start(data, *extra, files="caption_train.tsv,caption_test.tsv"):
    """fairseq-train's start-up up to the Trainer: parse, convert, set up the task, build the model."""
    args = options.parse_args_and_arch(options.get_training_parser(), [
        ",".join(f"{data}/{f}" for f in files.split(",")), *common("caption", data), *MICRO_CLI,
        "--lr-scheduler", "polynomial_decay", "--lr", "0.01", "--batch-size", "4", "--cpu", *extra])
    cfg = convert_namespace_to_omegaconf(args)  # stock fairseq stops here without --total-num-update
    task = tasks.setup_task(cfg.task)
    task.build_model(cfg.model)
    return cfg


def test_ofas_epoch_command_line_starts_and_counts_its_updates(data, tmp_path, caplog):
    cfg = fairseq_train_start(data, "--max-epoch", "5", "--warmup-ratio", "0.2", "--update-freq", "2",
                              "--save-dir", str(tmp_path))
    # 12 rows / batch 4 = 3 batches an epoch, 2 per update -> 2 updates an epoch, 10 in 5 epochs, 2 of warmup
    assert cfg.lr_scheduler.total_num_update == 10 and cfg.lr_scheduler.warmup_updates == 2
    assert ("learning-rate schedule: 10 updates in all (--max-epoch 5 over the training data), 2 of warmup"
            in caplog.text)


def test_training_files_of_several_epochs_are_counted_each(data, tmp_path):
    tiny_data.write(data / "caption_more.tsv", tiny_data.rows("caption", 20, seed=5))
    files = "caption_train.tsv,caption_more.tsv,caption_test.tsv"
    args = ["--max-epoch", "3", "--save-dir", str(tmp_path)]
    cfg = fairseq_train_start(data, *args, files=files)
    assert cfg.lr_scheduler.total_num_update == 3 + 5 + 3  # epochs read 12, 20, 12 rows in batches of 4
    cfg = fairseq_train_start(data, *args, "--total-num-update", "7", files=files)
    assert cfg.lr_scheduler.total_num_update == 7


def test_warmup_ratio_with_another_scheduler_is_refused(data, tmp_path):
    args = options.parse_args_and_arch(options.get_training_parser(), [
        f"{data}/caption_train.tsv,{data}/caption_test.tsv", *common("caption", data), *MICRO_CLI,
        "--lr-scheduler", "inverse_sqrt", "--warmup-ratio", "0.1", "--max-epoch", "1", "--save-dir", str(tmp_path)])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    with pytest.raises(ValueError, match="--warmup-ratio is polynomial_decay's option .* give --warmup-updates"):
        task.build_model(cfg.model)
