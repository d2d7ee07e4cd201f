"""Loading a state dict strictly: official OFA checkpoints may carry the relative-position index buffers
(pure functions of the config, rebuilt here) and may lack the parameters of the tuning method being
started (prompts, adapters), which are initialized fresh; everything else must match exactly. A
prompt-only state dict gets its backbone back from the file it records."""
import logging
import os

from ..errors import InputError
from ..file_version import check_unchanged, file_version
from .files import read_checkpoint
from .prompt_only import BACKBONE_KEY, file_fingerprint

logger = logging.getLogger(__name__)

# Deterministic index buffers that OFA stores in its checkpoints; this model rebuilds them.
INDEX_BUFFERS = ("token_rp_bucket", "image_rp_bucket", "image_position_idx")


class CheckpointMismatchError(InputError, ValueError):
    pass


class BackboneNotFound(InputError, FileNotFoundError):
    pass


def _with_backbone(model, state_dict: dict, prefix: str):
    """Fill a prompt-only state dict with the backbone it records (or the one the user named: --backbone,
    --model-overrides "{'backbone': ...}"), checking its hash."""
    record = state_dict.pop(prefix + BACKBONE_KEY)
    path = _backbone_file(model, record)
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


def _backbone_file(model, record: dict) -> str:
    """The backbone file of a prompt-only state dict: the one the user named, else the one it records. The
    file a run starts from (--restore-file caption_stage1_best.pt, a copy of a prompt-only checkpoint) is not
    a backbone."""
    given = getattr(model, "given_backbone", None)
    if given and os.path.isfile(given):
        return given
    if os.path.isfile(record["path"]):
        if given:  # e.g. a relative --backbone recorded by fairseq-train, read from another folder
            logger.warning("backbone %s not found: using %s, which the prompts record (hash-checked)", given,
                           record["path"])
        return record["path"]
    loading = getattr(model, "start_file", None) or "the prompt-only checkpoint"
    named = f"; {given}, given as the backbone, is not there either" if given and given != record["path"] else ""
    raise BackboneNotFound(
        f"{loading} holds prompts only; the backbone it records, {record['path']}, is missing{named}: give its new "
        f"location with --backbone NEW.pt (fairseq-train), --model-overrides \"{{'backbone': 'NEW.pt'}}\" "
        f"(fairseq-generate) or overrides={{'backbone': 'NEW.pt'}} (load_model)")


def upgrade_state_dict(model, state_dict, name="") -> set:
    """Make an OFA state dict loadable by `model` with strict=True, or explain why it is not. Returns the
    names of the tuning tensors the checkpoint lacks, which keep the model's fresh initialization."""
    prefix = f"{name}." if name else ""
    if prefix + BACKBONE_KEY in state_dict:
        _with_backbone(model, state_dict, prefix)
    for key in [k for k in state_dict if k.rsplit(".", 1)[-1] in INDEX_BUFFERS]:
        del state_dict[key]

    own = model.full_state_dict()
    # BatchNorm's step counter: --freeze-resnet's FrozenBatchNorm2d has none (OFA's drops it when loading),
    # and a checkpoint trained with it lacks the counter a trainable BatchNorm starts from
    for key in [k for k in state_dict if k.endswith(".num_batches_tracked") and k[len(prefix):] not in own]:
        del state_dict[key]
    for key in [k for k in own if k.endswith(".num_batches_tracked") and prefix + k not in state_dict]:
        state_dict[prefix + key] = own[key]
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
    if fresh:
        logger.info("initialized %d tensors that the checkpoint lacks (tuning parameters): %s",
                    len(fresh), _few(fresh))
    return set(fresh)


def _created_by_tuning(key: str) -> bool:
    return "_prompt_encoder." in key or ".adapter." in key


def _few(keys, n=6):
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
