"""Checkpoint files as fairseq and OFA write them: reading one without running pickled code, the model
arguments and the task it records (in each of its formats), and whether a file is whole."""
import argparse
import os
import zipfile
from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf


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
