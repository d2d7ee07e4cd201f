"""Prompt-only checkpoints: with a frozen backbone, fairseq-train writes only the tuned tensors plus a
record of the backbone file (path, size, sha256) under BACKBONE_KEY; prompt_only_checkpoint is what its
writer calls (fairseq_compat), the model's own state_dict() being the whole one."""
import hashlib
import logging
import os
from contextlib import nullcontext

from ..file_version import file_version

logger = logging.getLogger(__name__)

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
