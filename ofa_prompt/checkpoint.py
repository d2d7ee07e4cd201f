"""State dicts: official OFA checkpoints, and the plugin's prompt-only checkpoints.

Official checkpoints may carry the relative-position index buffers (pure functions of the config,
rebuilt here) and may lack the parameters of the tuning method being started (prompts, adapters):
those are initialized fresh. Everything else must match exactly.

With a frozen backbone the plugin writes only the tuned tensors plus a record of the backbone file
(path, size, sha256) under BACKBONE_KEY; loading such a state dict reads the backbone back from that file.
"""
import argparse
import hashlib
import logging
import os

import torch

logger = logging.getLogger(__name__)

# Deterministic index buffers that OFA stores in its checkpoints; this model rebuilds them.
INDEX_BUFFERS = ("token_rp_bucket", "image_rp_bucket", "image_position_idx")
BACKBONE_KEY = "_ofa_prompt_backbone"
_HASHES = {}


def file_fingerprint(path: str) -> dict:
    """{"path", "bytes", "sha256"} of a checkpoint file (hashed once per process and file version)."""
    path = os.path.abspath(path)
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return {"path": path, "bytes": st.st_size, "sha256": _HASHES[key]}


def read_checkpoint(path: str) -> dict:
    """torch.load a fairseq checkpoint without running pickled code beyond argparse.Namespace."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, or not a checkpoint at all
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    return state


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


def _with_backbone(model, state_dict: dict, prefix: str):
    """Fill a prompt-only state dict with the backbone it records (or --backbone), checking its hash."""
    record = state_dict.pop(prefix + BACKBONE_KEY)
    path = model.cfg.backbone if model.cfg.backbone and os.path.isfile(model.cfg.backbone) else record["path"]
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the backbone of this prompt-only checkpoint, {record['path']}, is missing: pass its new location with "
            f"--model-overrides \"{{'backbone': '/path/to/backbone.pt'}}\" (or overrides={{'backbone': ...}})")
    found = file_fingerprint(path)
    if found["sha256"] != record["sha256"] and not model.cfg.force_backbone:
        raise CheckpointMismatchError(
            f"backbone {path} (sha256 {found['sha256'][:12]}) is not the one the prompts were trained on "
            f"({record['path']}, sha256 {record['sha256'][:12]}); use --model-overrides \"{{'force_backbone': True}}\" "
            "to load it anyway")
    backbone = read_checkpoint(path)["model"]
    if BACKBONE_KEY in backbone:
        raise CheckpointMismatchError(f"backbone {path} is itself a prompt-only checkpoint")
    for key, value in backbone.items():
        state_dict.setdefault(prefix + key, value)
    model.cfg.backbone = path


class CheckpointMismatchError(ValueError):
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
