"""The learning-rate schedule's length under OFA's `--warmup-ratio` and `--max-epoch`.

OFA's run scripts give `--lr-scheduler polynomial_decay --max-epoch N --warmup-ratio 0.06` and no number of
updates: OFA's forked train.py counts them from the first epoch's batches and re-initializes the schedule.
Stock fairseq needs `--total-num-update` by hand and stops at start-up without it. Here fairseq-train's
task counts the updates from the training data before fairseq builds the scheduler (the task builds the
model first) and writes the two numbers into the scheduler's configuration, logging them.

Counting: every row is used once per epoch in fixed `--batch-size` batches (OFADataset.batch_by_size),
fairseq gives each of the W data-parallel ranks every W-th batch (the last ones padded), and an update
takes `--update-freq` batches. So an epoch of R rows has ceil(ceil(ceil(R / B) / W) / F) updates; epochs
cycle through the training files, each with its own R. The warmup is int(total x ratio), as in OFA.
"""
import logging
import math
from typing import Optional, Sequence, Tuple

from .data.dataset import rows_per_batch
from .fairseq_compat.config import set_lr_schedule_length

logger = logging.getLogger(__name__)


def updates_per_epoch(rows: int, batch_size: int, world_size: int, update_freq: int) -> int:
    batches = math.ceil(rows / batch_size)
    return math.ceil(math.ceil(batches / world_size) / update_freq)


def total_updates(rows_per_epoch: Sequence[int], batch_size: int, world_size: int,
                  update_freq: Sequence[int]) -> int:
    """Updates of a run whose epoch e (from 1) reads rows_per_epoch[e - 1] rows; fairseq takes
    update_freq[e - 1] for epoch e, and the last value for later epochs."""
    return sum(updates_per_epoch(rows, batch_size, world_size, update_freq[min(e, len(update_freq) - 1)])
               for e, rows in enumerate(rows_per_epoch))


def schedule(derived_total: Optional[int], max_update: int, given_total: Optional[float], warmup_ratio: float,
             warmup_updates: int) -> Tuple[float, int]:
    """(total_num_update, warmup_updates) for polynomial_decay.

    derived_total: the updates counted from --max-epoch and the data (None without --max-epoch); an explicit
    --total-num-update wins over it, and --max-update caps it (training stops there)."""
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"--warmup-ratio={warmup_ratio}: a fraction of all updates, at least 0 and below 1")
    if warmup_ratio > 0 and warmup_updates > 0:
        raise ValueError(f"--warmup-ratio={warmup_ratio} and --warmup-updates={warmup_updates}: give one of them")
    if given_total is not None and given_total > 0:
        total = given_total
    elif derived_total is not None:
        total = min(derived_total, max_update) if max_update > 0 else derived_total
    elif max_update > 0:
        total = max_update
    else:
        raise ValueError("--lr-scheduler polynomial_decay needs the number of updates to decay over: give "
                         "--max-epoch (the updates are then counted from the data, as in OFA), --max-update "
                         "or --total-num-update")
    if total < 1:
        raise ValueError(f"polynomial_decay over {total} updates: the training data has no batch")
    warmup = int(total * warmup_ratio) if warmup_ratio > 0 else warmup_updates
    return total, warmup


def plan_lr_schedule(task, root) -> None:
    """fairseq-train: fill in the polynomial_decay schedule's length from the data (see the module's
    docstring). `root` is fairseq's whole configuration; its lr_scheduler node is what the Trainer builds
    the scheduler from, later."""
    ratio = task.cfg.warmup_ratio
    name = root.lr_scheduler.get("_name") if root.get("lr_scheduler") is not None else None
    if name != "polynomial_decay":
        if ratio > 0:
            raise ValueError(f"--warmup-ratio is polynomial_decay's option (as in OFA); with --lr-scheduler {name} "
                             "give --warmup-updates instead")
        return
    sched, optim = root.lr_scheduler, root.optimization
    given = sched.total_num_update if sched.total_num_update > 0 else None  # 0: not given (see below)
    derived = None
    if optim.max_epoch > 0 and not (given is not None and given > 0):
        rows = task.training_rows(optim.max_epoch)
        batch = rows_per_batch(root.dataset.batch_size, root.dataset.max_tokens, task.datasets["train"].max_src_length)
        derived = total_updates(rows, batch, max(root.distributed_training.distributed_world_size, 1),
                                list(optim.update_freq))
    total, warmup = schedule(derived, optim.max_update, given, ratio, sched.warmup_updates)
    set_lr_schedule_length(root, float(total), warmup)
    if derived is not None or ratio > 0:
        logger.info("learning-rate schedule: %d updates in all%s, %d of warmup%s (polynomial_decay's "
                    "--total-num-update and --warmup-updates)", total,
                    f" (--max-epoch {optim.max_epoch} over the training data)" if derived is not None else "",
                    warmup, f" (--warmup-ratio {ratio})" if ratio > 0 else "")


def default_total_updates(parser) -> None:
    """polynomial_decay's --total-num-update defaults to a reference to --max-update, which fairseq 0.12's
    command line turns into null and then refuses as not Optional: every run without the option stops at
    start-up. 0 stands for "not given" instead (plan_lr_schedule counts the updates then). fairseq adds the
    scheduler's options after the task's, without a default of their own, so argparse takes this one."""
    parser.set_defaults(total_num_update=0.0)
