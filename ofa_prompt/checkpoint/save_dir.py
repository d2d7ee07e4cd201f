"""fairseq-train's --save-dir made safe: one run per folder, and a damaged file to resume from reported
before training starts, with the newest readable checkpoint to resume from instead. (The atomic copies of
checkpoint_last.pt / checkpoint_best.pt are a change to fairseq's writer: fairseq_compat.)"""
import fcntl
import glob
import os
import re
from typing import Optional

from ..errors import InputError
from ..fairseq_compat.config import root_of, section
from .files import require_checkpoint, unreadable


class SaveDirError(InputError, ValueError):
    """A --save-dir that fairseq-train cannot use as it is."""


def resume_file(ckpt) -> Optional[str]:
    """The file fairseq-train's checkpoint_utils.load_checkpoint will read, by its own rules."""
    suffix = ckpt.checkpoint_suffix or ""
    if ckpt.restore_file != "checkpoint_last.pt":
        return ckpt.restore_file.replace(".pt", suffix + ".pt")
    last = os.path.join(ckpt.save_dir, f"checkpoint_last{suffix}.pt")
    if os.path.exists(last):
        return last
    return getattr(ckpt, "continue_once", None) or ckpt.finetune_from_model


def newest_readable(save_dir: str, exclude: str) -> Optional[str]:
    """The most recently written readable checkpoint*.pt in `save_dir` other than `exclude` (ties: the
    higher update count of fairseq's checkpoint_EPOCH_UPDATES.pt names)."""
    def age(path):
        updates = re.search(r"checkpoint_\d+_(\d+)", os.path.basename(path))
        return os.stat(path).st_mtime_ns, int(updates.group(1)) if updates else -1

    candidates = [p for p in glob.glob(os.path.join(save_dir, "checkpoint*.pt"))
                  if not os.path.samefile(p, exclude)]
    return next((p for p in sorted(candidates, key=age, reverse=True) if unreadable(p) is None), None)


def check_resume_file(model_cfg):
    """In fairseq-train, before the Trainer loads: a damaged file to resume from is an error naming it
    and the checkpoint to resume from instead (fairseq would fail later with a bare zip error).
    `model_cfg` is fairseq-train's cfg.model; its root holds the checkpoint options."""
    ckpt = section(model_cfg, "checkpoint")
    path = resume_file(ckpt) if ckpt is not None else None
    if not path or not os.path.isfile(path):
        return
    require_checkpoint(path, "--finetune-from-model" if path == ckpt.finetune_from_model else "--restore-file")
    why = unreadable(path)
    if why is None:
        return
    message = f"{path} cannot be read ({why}); it is the checkpoint fairseq-train would resume from. "
    good = newest_readable(ckpt.save_dir, path) if os.path.isdir(ckpt.save_dir) else None
    if good is None:
        raise SaveDirError(message + f"No readable checkpoint*.pt is left in {ckpt.save_dir}: move {path} away to "
                                   "start again from the beginning")
    option = f"--restore-file {good}"
    if ckpt.finetune_from_model:
        # fairseq refuses both options together; the pretrained file stays the backbone of prompt-only checkpoints
        backbone = "" if getattr(model_cfg, "backbone", None) else f" --backbone {ckpt.finetune_from_model}"
        option += f"{backbone} in place of --finetune-from-model {ckpt.finetune_from_model}"
    raise SaveDirError(message + f"The newest readable checkpoint in {ckpt.save_dir} is {good}: resume from it "
                               f"with {option}")


LOCK_NAME = ".fairseq-train.lock"
_held_locks = {}  # real save-dir path -> the open lock file this process holds (released when it exits)


def claim_save_dir(model_cfg):
    """In fairseq-train, before anything is written: take `--save-dir` for this run, so that a second run
    started on the same folder stops at once instead of writing the same checkpoint files. An flock on a
    file in the folder: the kernel releases it when the run ends, however it ends (SIGKILL included), so a
    stale lock never blocks. Data-parallel ranks share the folder: rank 0 takes it."""
    root = root_of(model_cfg)
    if root is None or root.get("checkpoint") is None or root.checkpoint.get("no_save", False):
        return
    if root.get("distributed_training") is not None and root.distributed_training.distributed_rank not in (0, None):
        return
    folder = os.path.realpath(root.checkpoint.save_dir)
    if folder in _held_locks or "://" in root.checkpoint.save_dir:  # already ours, or remote storage
        return
    os.makedirs(folder, exist_ok=True)
    lock = open(os.path.join(folder, LOCK_NAME), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        owner = lock.read().strip() or "another process"
        lock.close()
        raise SaveDirError(f"--save-dir {root.checkpoint.save_dir} is in use by another fairseq-train ({owner}): "
                         "two runs would write the same checkpoints; give this run its own --save-dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    _held_locks[folder] = lock
