"""Checkpoint files as fairseq and OFA write them: reading one without running pickled code, the model
arguments and the task it records (in each of its formats), and whether a file is whole."""
import argparse
import os
import struct
import zipfile
from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import InputError

# where each kind of file goes, for the message that meets one given in the other's place
PROMPT_FILE_USES = ("a prompt file goes to fairseq-generate --prompt-file (the backbone it was tuned on as --path), "
                    "from_pretrained(BACKBONE, prompts=FILE), load_prompts(FILE), or fairseq-train --prompt-init FILE "
                    "to start tuning from it")
CHECKPOINT_USES = ("a checkpoint goes to fairseq-generate --path, fairseq-train --restore-file / "
                   "--finetune-from-model, or from_pretrained(CHECKPOINT); to get a prompt file from it, "
                   "python -m ofa_prompt.prompt_file export CHECKPOINT OUT.safetensors")


class WrongFileKind(InputError, ValueError):
    """A prompt file given where a checkpoint is expected, or a checkpoint where a prompt file is."""


class CheckpointNotFound(InputError, FileNotFoundError):
    pass


def file_kind(path: str) -> str:
    """'torch' (a zip archive or a pickle: what torch.save writes), 'safetensors' (an 8-byte header length,
    then that many bytes of JSON), or 'other', from the first bytes of `path`."""
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors first: its header length's low byte may be 0x80, a pickle's first byte
    if len(head) == 9 and head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= os.path.getsize(path):
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"
    return "other"


def require_checkpoint(path: str, option: str = "the checkpoint"):
    """Refuse a prompt file given as a checkpoint (`option` names where it was given), in one line."""
    if os.path.isfile(path) and file_kind(path) == "safetensors":
        raise WrongFileKind(f"{option} {path} is a prompt file (safetensors), not a fairseq checkpoint: "
                            f"{PROMPT_FILE_USES}")


def read_checkpoint(path: str, handle=None) -> dict:
    """torch.load a fairseq checkpoint (from `handle`, an open binary file of `path`, if given) without
    running pickled code beyond argparse.Namespace."""
    if handle is None and not os.path.isfile(path):
        raise CheckpointNotFound(f"checkpoint not found: {path}")
    require_checkpoint(path)
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


def saved_task(state: dict) -> Tuple[Optional[str], Dict[str, Any]]:
    """(task name, task options) a checkpoint records, as fairseq reads it: `args` first, else cfg['task']."""
    args = state.get("args")
    if isinstance(args, argparse.Namespace):
        options = dict(vars(args))
        return options.get("task"), options
    cfg = state.get("cfg")
    task = cfg.get("task") if isinstance(cfg, (dict, DictConfig)) else getattr(cfg, "task", None)
    if isinstance(task, DictConfig):
        task = OmegaConf.to_container(task, enum_to_str=True)
    elif isinstance(task, argparse.Namespace):
        task = vars(task)
    if not isinstance(task, dict):
        return None, {}
    return task.get("_name"), dict(task)


def unfinished(state: dict) -> Optional[str]:
    """Why the fairseq-train run that wrote checkpoint `state` stopped before its --max-update (SIGTERM and Ctrl-C
    save and exit 0, as a finished run does), or None where it finished or sets no --max-update."""
    cfg = state.get("cfg") or {}
    optimization = cfg.get("optimization") if isinstance(cfg, (dict, DictConfig)) else None
    planned = (optimization or {}).get("max_update") or 0
    history = state.get("optimizer_history") or [{}]
    done = history[-1].get("num_updates", 0)
    return f"it stopped at update {done} of --max-update {planned}" if planned and done < planned else None
