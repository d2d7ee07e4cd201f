"""State dicts: official OFA checkpoints, and the plugin's prompt-only checkpoints.

Official checkpoints may carry the relative-position index buffers (pure functions of the config,
rebuilt here) and may lack the parameters of the tuning method being started (prompts, adapters):
those are initialized fresh. Everything else must match exactly.

With a frozen backbone the plugin writes only the tuned tensors plus a record of the backbone file
(path, size, sha256) under BACKBONE_KEY (prompt_only_checkpoint, which fairseq-train's writer calls; the
model's own state_dict() is the whole one); loading such a state dict reads the backbone back from that file.

fairseq-train's own checkpoint files are made safe here too: the copies it makes (checkpoint_last.pt,
checkpoint_best.pt) are written atomically, and a damaged file it would resume from is reported before
training starts, with the newest readable checkpoint to resume from instead.
"""
import argparse
import fcntl
import glob
import hashlib
import logging
import os
import re
import zipfile
from contextlib import nullcontext
from typing import Optional

import torch
from omegaconf import DictConfig

from .errors import InputError
from .file_version import check_unchanged, file_version

logger = logging.getLogger(__name__)

# Deterministic index buffers that OFA stores in its checkpoints; this model rebuilds them.
INDEX_BUFFERS = ("token_rp_bucket", "image_rp_bucket", "image_position_idx")
BACKBONE_KEY = "_ofa_prompt_backbone"
_HASHES = {}


def file_fingerprint(path: str, handle=None) -> dict:
    """{"path", "bytes", "sha256"} of a checkpoint file, read from `handle` if given (an open binary file of
    `path`, left at its start); hashed once per process and file version."""
    path = os.path.abspath(path)
    version = file_version(handle.fileno() if handle is not None else path)
    if version not in _HASHES:
        h = hashlib.sha256()
        with (nullcontext(handle) if handle is not None else open(path, "rb")) as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
            f.seek(0)
        _HASHES[version] = h.hexdigest()
    return {"path": path, "bytes": version[2], "sha256": _HASHES[version]}


def read_checkpoint(path: str, handle=None) -> dict:
    """torch.load a fairseq checkpoint (from `handle`, an open binary file of `path`, if given) without
    running pickled code beyond argparse.Namespace."""
    if handle is None and not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:  # argparse.Namespace is allow-listed by fairseq_compat.install()
        state = torch.load(handle if handle is not None else path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, or not a checkpoint at all
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    return state


def model_args(state: dict, path: str = "checkpoint"):
    """The model arguments a checkpoint was trained with (cfg['model'] or the older top-level 'args')."""
    cfg = state.get("cfg")
    args = cfg.get("model") if isinstance(cfg, dict) else getattr(cfg, "model", None) if cfg is not None else None
    if args is None:
        args = state.get("args")
    if args is None:
        raise ValueError(f"{path} records no model arguments (neither cfg['model'] nor args)")
    if isinstance(args, dict):
        args = argparse.Namespace(**args)
    elif not isinstance(args, argparse.Namespace):  # an omegaconf DictConfig
        args = argparse.Namespace(**{k: args[k] for k in args})
    return args


def store_model_args(state: dict, args: argparse.Namespace):
    """Write `args` back where model_args found them, in the form found there (a dict, a Namespace)."""
    cfg = state.get("cfg")
    found = cfg.get("model") if isinstance(cfg, dict) else getattr(cfg, "model", None) if cfg is not None else None
    if found is None:
        state["args"] = args
    elif isinstance(found, argparse.Namespace):
        cfg["model"] = args
    else:  # a dict or an omegaconf DictConfig: a plain dict reads back the same through model_args
        cfg["model"] = dict(vars(args))


def tuned_state_dict(model, state: dict) -> dict:
    """The prompt-only form of `state` when the backbone is frozen and its file is known; else `state`."""
    if model.tuning == "finetune" or model.cfg.save_full_checkpoint:
        return state
    if not model.cfg.backbone or not os.path.isfile(model.cfg.backbone):
        if not getattr(model, "_warned_full", False):
            logger.warning("backbone file unknown (no --backbone, --finetune-from-model or --restore-file): "
                           "checkpoints hold the whole model")
            model._warned_full = True
        return state
    tuned = {name for name, p in model.named_parameters() if p.requires_grad}
    out = {k: v for k, v in state.items() if k in tuned}
    # the vocabulary size lets a loader build the model without reading the backbone file first
    out[BACKBONE_KEY] = {**file_fingerprint(model.cfg.backbone), "vocab": len(model.encoder.dictionary)}
    return out


def prompt_only_checkpoint(model, checkpoint: dict) -> dict:
    """What fairseq-train writes for the live `model`: its checkpoint dict with the model's state, and the
    EMA's (extra_state["ema"], --store-ema), in prompt-only form. The EMA is selected by the live model's
    trained tensors: the EMA model itself trains nothing (requires_grad is off throughout)."""
    checkpoint["model"] = tuned_state_dict(model, checkpoint["model"])
    extra = checkpoint.get("extra_state") or {}
    if isinstance(extra.get("ema"), dict):
        extra["ema"] = tuned_state_dict(model, extra["ema"])
    return checkpoint


def _with_backbone(model, state_dict: dict, prefix: str):
    """Fill a prompt-only state dict with the backbone it records (or --backbone), checking its hash."""
    record = state_dict.pop(prefix + BACKBONE_KEY)
    path = model.cfg.backbone if model.cfg.backbone and os.path.isfile(model.cfg.backbone) else record["path"]
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the backbone of this prompt-only checkpoint, {record['path']}, is missing: pass its new location with "
            f"--model-overrides \"{{'backbone': '/path/to/backbone.pt'}}\" (or overrides={{'backbone': ...}})")
    with open(path, "rb") as f:  # hashed and loaded through one handle: the version hashed is the one loaded
        version = file_version(f.fileno())
        found = file_fingerprint(path, f)
        if found["sha256"] != record["sha256"] and not model.cfg.force_backbone:
            raise CheckpointMismatchError(
                f"backbone {path} (sha256 {found['sha256'][:12]}) is not the one the prompts were trained on "
                f"({record['path']}, sha256 {record['sha256'][:12]}); use --model-overrides "
                "\"{'force_backbone': True}\" to load it anyway")
        backbone = read_checkpoint(path, f)["model"]
        check_unchanged(path, version, file_version(f.fileno()), "while it was read as the prompts' backbone")
    if BACKBONE_KEY in backbone:
        raise CheckpointMismatchError(f"backbone {path} is itself a prompt-only checkpoint")
    for key, value in backbone.items():
        state_dict.setdefault(prefix + key, value)
    model.cfg.backbone = path


class CheckpointMismatchError(InputError, ValueError):
    pass


def upgrade_state_dict(model, state_dict, name=""):
    """Make an OFA state dict loadable by `model` with strict=True, or explain why it is not."""
    prefix = f"{name}." if name else ""
    if prefix + BACKBONE_KEY in state_dict:
        _with_backbone(model, state_dict, prefix)
    for key in [k for k in state_dict if k.rsplit(".", 1)[-1] in INDEX_BUFFERS]:
        del state_dict[key]

    own = model.full_state_dict()
    out_proj = prefix + "decoder.output_projection.weight"
    if out_proj not in state_dict and (prefix + "decoder.embed_tokens.weight") in state_dict \
            and model.cfg.share_decoder_input_output_embed:
        state_dict[out_proj] = state_dict[prefix + "decoder.embed_tokens.weight"]

    fresh, missing = [], []
    for key, value in own.items():
        full = prefix + key
        if full in state_dict:
            continue
        if key.endswith(".version") or _created_by_tuning(key):
            state_dict[full] = value  # new parameters start from their initialization
            if not key.endswith(".version"):
                fresh.append(key)
        else:
            missing.append(key)
    unexpected = [k[len(prefix):] for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in own]
    mismatched = [(k, tuple(state_dict[prefix + k].shape), tuple(v.shape)) for k, v in own.items()
                  if prefix + k in state_dict and tuple(state_dict[prefix + k].shape) != tuple(v.shape)]

    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {_few(missing)}")
    if unexpected:
        problems.append(f"in the checkpoint but not in this model: {_few(unexpected)}")
    for key, theirs, ours in mismatched[:5]:
        hint = ""
        if key.endswith("embed_tokens.weight") or key.endswith("output_projection.weight"):
            hint = f" (the checkpoint's dictionary has {theirs[0]} entries, the task's {ours[0]})"
        problems.append(f"{key}: shape {list(theirs)} in the checkpoint, {list(ours)} in the model{hint}")
    if problems:
        raise CheckpointMismatchError(
            "the checkpoint does not fit this model's architecture (check --arch and the size, prompt "
            "and adapter options):\n  " + "\n  ".join(problems))
    model.fresh_prompts = not any("_prompt_encoder." in k for k in own if k not in fresh)
    if fresh:
        logger.info("initialized %d tensors that the checkpoint lacks (tuning parameters): %s",
                    len(fresh), _few(fresh))


def _created_by_tuning(key: str) -> bool:
    return "_prompt_encoder." in key or ".adapter." in key


def _few(keys, n=6):
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# --- fairseq-train's checkpoint files -------------------------------------------------------------

def unreadable(path: str) -> Optional[str]:
    """Why torch.load would fail on checkpoint `path`, or None if it looks whole. Checks the CRCs of a
    zip checkpoint (what torch.save writes) without unpickling; a legacy pickle file is not checked."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"\x80"):
            return None
        if head != b"PK\x03\x04":
            return "empty file" if not head else "not a torch checkpoint (neither a zip archive nor a pickle)"
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        return f"entry {bad} fails its CRC check" if bad else None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        return f"truncated or corrupted: {type(e).__name__}: {e}"


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
    root = model_cfg._get_root() if isinstance(model_cfg, DictConfig) else None
    ckpt = root.get("checkpoint") if root is not None and "checkpoint" in root else None
    path = resume_file(ckpt) if ckpt is not None else None
    if not path or not os.path.isfile(path):
        return
    why = unreadable(path)
    if why is None:
        return
    message = f"{path} cannot be read ({why}); it is the checkpoint fairseq-train would resume from. "
    good = newest_readable(ckpt.save_dir, path) if os.path.isdir(ckpt.save_dir) else None
    if good is None:
        raise ValueError(message + f"No readable checkpoint*.pt is left in {ckpt.save_dir}: move {path} away to "
                                   "start again from the beginning")
    option = f"--restore-file {good}"
    if ckpt.finetune_from_model:
        # fairseq refuses both options together; the pretrained file stays the backbone of prompt-only checkpoints
        backbone = "" if getattr(model_cfg, "backbone", None) else f" --backbone {ckpt.finetune_from_model}"
        option += f"{backbone} in place of --finetune-from-model {ckpt.finetune_from_model}"
    raise ValueError(message + f"The newest readable checkpoint in {ckpt.save_dir} is {good}: resume from it "
                               f"with {option}")


LOCK_NAME = ".fairseq-train.lock"
_held_locks = {}  # real save-dir path -> the open lock file this process holds (released when it exits)


def claim_save_dir(model_cfg):
    """In fairseq-train, before anything is written: take `--save-dir` for this run, so that a second run
    started on the same folder stops at once instead of writing the same checkpoint files. An flock on a
    file in the folder: the kernel releases it when the run ends, however it ends (SIGKILL included), so a
    stale lock never blocks. Data-parallel ranks share the folder: rank 0 takes it."""
    root = model_cfg._get_root() if isinstance(model_cfg, DictConfig) else None
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
        raise ValueError(f"--save-dir {root.checkpoint.save_dir} is in use by another fairseq-train ({owner}): "
                         "two runs would write the same checkpoints; give this run its own --save-dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    _held_locks[folder] = lock

