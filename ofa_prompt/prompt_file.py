"""Prompt files: the tuned prompts of a checkpoint as a small safetensors file, one per task.

A prompt file holds, for each prompted side and layer, the key and value prefixes `{side}.{layer}.key` /
`{side}.{layer}.value` ([heads, P, head_dim]), and for prompts tuned with --prompt-gate the per-head factor
`{side}.{layer}.gate` ([heads]; the side's metadata says "gated": true); a reparameterization MLP (projection or
residual) is folded away. Its metadata
records the shapes it fits. safetensors runs no code on load, so files from strangers are safe to open.

    python -m ofa_prompt.prompt_file export CHECKPOINT OUT.safetensors
    python -m ofa_prompt.prompt_file merge --backbone ofa_base.pt --prompts OUT.safetensors --out merged.pt

and in Python, several prompt files on one loaded backbone, in PEFT's steps: load a file once
(`load_prompt_file(path)` -> its tensors and record), check them against the model (`check_prompts`) and make
them the active ones (`model.set_prompts(tensors)`); `attach_prompts(model, "caption.safetensors")` does all three.
"""
import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ofa_prompt.prompt_file", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="checkpoint -> prompt file (.safetensors)")
    ex.add_argument("checkpoint")
    ex.add_argument("out")
    mg = sub.add_parser("merge", help="backbone checkpoint + prompt file -> one full checkpoint")
    mg.add_argument("--backbone", required=True)
    mg.add_argument("--prompts", required=True)
    mg.add_argument("--out", required=True)
    mg.add_argument("--force-backbone", action="store_true",
                    help="merge even if the backbone differs from the one the prompts were tuned on")
    return parser.parse_args(argv)


# `python -m ofa_prompt.prompt_file`: --help and argument errors are answered before the imports below (torch,
# fairseq: seconds); the command then runs in this module imported under its own name, and this copy ends here
if __name__ == "__main__":
    _args = parse_args()
    from ofa_prompt import load
    load(command_line=True)  # the plugin: checkpoints need it (importing the package loads nothing)
    from ofa_prompt.prompt_file import run
    sys.exit(run(_args))

import json  # noqa: E402  (the imports below: after the command line's early answers above)
import logging  # noqa: E402
import os  # noqa: E402
from typing import NamedTuple, Optional, Sequence, Union  # noqa: E402

import torch  # noqa: E402
from safetensors import SafetensorError, safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from .atomic_file import atomic_path  # noqa: E402
from .checkpoint import (  # noqa: E402
    BACKBONE_KEY,
    CHECKPOINT_USES,
    WrongFileKind,
    file_fingerprint,
    file_kind,
    model_args,
    read_checkpoint,
    saved_task,
    store_model_args,
)
from .errors import InputError  # noqa: E402
from .models.config import config_from  # noqa: E402
from .models.prompt import PromptSet, fold, unfold  # noqa: E402
from .models.stack import build_prompt_encoder  # noqa: E402

logger = logging.getLogger(__name__)

FORMAT = "ofa_prompt.prompts/1"
SIDES = ("encoder", "decoder")
SIZES = ("embed_dim", "heads", "num_layers", "length")


# where each side's prompt module sits in a state dict (OFA's names)
PROMPT_KEYS = {"encoder": "encoder.encoder_prompt_encoder.", "decoder": "decoder.decoder_prompt_encoder."}


def _stacks(cfg) -> dict:
    return {"encoder": cfg.encoder_stack, "decoder": cfg.decoder_stack}


def _side_shape(stack) -> dict:
    return {"embed_dim": stack.embed_dim, "heads": stack.attention_heads, "num_layers": stack.layers}


class NoPrompts(InputError, ValueError):
    """A checkpoint without prompts, given where its prompts are wanted."""


def export_prompts(checkpoint: str, out: str) -> dict:
    """Write the folded prompts of `checkpoint` (full or prompt-only; no backbone needed) to `out`."""
    state = read_checkpoint(checkpoint)
    cfg = config_from(model_args(state, checkpoint))
    tensors, meta = {}, {"format": FORMAT, "source": os.path.abspath(checkpoint), "sides": {}}
    for side, stack in _stacks(cfg).items():
        module = build_prompt_encoder(stack)
        if module is None:
            continue
        prefix = PROMPT_KEYS[side]
        weights = {k[len(prefix):]: v.float() for k, v in state["model"].items() if k.startswith(prefix)}
        try:
            module.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{checkpoint}: the {side} prompt tensors do not fit its recorded configuration: {e}")
        for layer, prefix in fold(module).items():
            for name, t in zip(("key", "value", "gate"), prefix):
                tensors[f"{side}.{layer}.{name}"] = t.contiguous()
        meta["sides"][side] = {**_side_shape(stack), "length": module.length, "layers": module.layers,
                               **({"gated": True} if module.gate is not None else {})}
    if not meta["sides"]:
        raise NoPrompts(f"{checkpoint} has no prompts to export (it was trained without --encoder-prompt and "
                        "--decoder-prompt): export a checkpoint of prompt tuning")
    if BACKBONE_KEY in state["model"]:
        meta["backbone"] = state["model"][BACKBONE_KEY]
    task, options = saved_task(state)
    if task in TUNED_TASKS:  # the settings the prompts were tuned with (OFAPredictor.load_prompts uses them)
        meta["task"] = {"name": task, "options": {k: v for k, v in options.items() if _plain(v)
                                                  and not k.startswith("_") and k not in NOT_RECORDED}}
    vocabulary = _dictionary_file(options.get("bpe_dir"), checkpoint)
    if vocabulary is not None:  # the token ids the prompts were tuned with
        meta["vocabulary"] = {"dict_sha256": file_fingerprint(vocabulary)["sha256"]}
    _atomic(out, lambda tmp: save_file(tensors, tmp, metadata={"ofa_prompt": json.dumps(meta)}))
    return meta


def _dictionary_file(bpe_dir: Optional[str], relative_to: str) -> Optional[str]:
    """The dict.txt of a recorded --bpe-dir, where it can be found (as given, or relative to the checkpoint's
    folder); None where it cannot (a path on the training machine)."""
    if not bpe_dir:
        return None
    for folder in (bpe_dir, os.path.join(os.path.dirname(os.path.abspath(relative_to)), bpe_dir)):
        if os.path.isfile(os.path.join(folder, "dict.txt")):
            return os.path.join(folder, "dict.txt")
    return None


class VocabularyMismatch(InputError, ValueError):
    """A prompt file meeting a dict.txt other than the one it was tuned with."""


def _check_vocabulary(prompts: str, meta: dict, bpe_dir: Optional[str]):
    """A prompt file that records the dictionary it was tuned with must meet the same dict.txt in `bpe_dir`."""
    recorded = meta.get("vocabulary", {}).get("dict_sha256")
    if not recorded or not bpe_dir or not os.path.isfile(os.path.join(bpe_dir, "dict.txt")):
        return
    ours = file_fingerprint(os.path.join(bpe_dir, "dict.txt"))["sha256"]
    if ours != recorded:
        raise VocabularyMismatch(f"{prompts} was tuned with another dictionary (dict.txt sha256 {recorded[:12]}) than "
                         f"{bpe_dir}/dict.txt (sha256 {ours[:12]}): the token ids would not mean the same words; "
                         "give the BPE folder the prompts were tuned with")


# task options that name files on the training machine, or say how training ran
NOT_RECORDED = ("data", "ans2label_file", "bpe_dir", "scst_cider_cached_tokens")
TUNED_TASKS = ("caption", "vqa_gen", "refcoco", "snli_ve")


def _plain(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


class PromptFileError(InputError, ValueError):
    """A prompt file that cannot be read or does not hold what its metadata says."""


class PromptFileNotFound(InputError, FileNotFoundError):
    pass


class PromptFile(NamedTuple):
    """What a prompt file holds, read once and validated."""
    tensors: PromptSet  # side -> layer -> (key, value[, gate])
    record: dict  # its metadata: shapes, and where recorded the task, backbone and dictionary it was tuned with


def load_prompt_file(path: str) -> PromptFile:
    """The tensors and record of prompt file `path`, validated (their shapes against the record's)."""
    if not os.path.isfile(path):
        raise PromptFileNotFound(f"prompt file not found: {path}")
    if file_kind(path) == "torch":
        raise WrongFileKind(f"{path} is a torch file (as torch.save writes a fairseq checkpoint), not a prompt "
                            f"file: {CHECKPOINT_USES}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("ofa_prompt", "null"))
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise PromptFileError(f"cannot read prompt file {path}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PromptFileError(f"{path} is not an ofa_prompt prompt file (metadata 'ofa_prompt' with format {FORMAT})")
    _check_metadata(path, meta)
    kv = {}
    for side, info in meta["sides"].items():
        names = ("key", "value", "gate") if info.get("gated") else ("key", "value")
        try:
            kv[side] = {layer: tuple(tensors[f"{side}.{layer}.{name}"] for name in names) for layer in info["layers"]}
        except KeyError as e:
            raise PromptFileError(f"{path}: tensor {e} listed in its metadata is missing") from None
        shape = (info["heads"], info["length"], info["embed_dim"] // info["heads"])
        shapes = (shape, shape, (info["heads"],))
        bad = [layer for layer, prefix in kv[side].items()
               if any(tuple(t.shape) != want for t, want in zip(prefix, shapes))]
        if bad:
            raise ValueError(f"{path}: {side} layer(s) {bad} are not of shape {list(shape)}"
                             + (f" (gate [{info['heads']}])" if info.get("gated") else ""))
    return PromptFile(kv, meta)


def _check_metadata(path: str, meta: dict):
    """The record export_prompts writes, or a ValueError naming the file (not a KeyError further on)."""
    def bad(what):
        return PromptFileError(f"{path}: malformed prompt file metadata: {what}")

    def count(value, least):
        return type(value) is int and value >= least

    sides = meta.get("sides")
    if not isinstance(sides, dict) or not sides:
        raise bad(f"'sides' must map {' and/or '.join(SIDES)} to their shapes, got {sides!r}")
    for side, info in sides.items():
        if side not in SIDES or not isinstance(info, dict):
            raise bad(f"side {side!r} must be one of {SIDES} with an object of shapes")
        wrong = [key for key in SIZES if not count(info.get(key), 1)]
        if wrong:
            raise bad(f"{side}: {', '.join(wrong)} must be positive integers, got "
                      + ", ".join(f"{key}={info.get(key)!r}" for key in wrong))
        layers = info.get("layers")
        if not (isinstance(layers, list) and layers and all(count(layer, 0) for layer in layers)
                and len(set(layers)) == len(layers) and max(layers) < info["num_layers"]):
            raise bad(f"{side}: 'layers' must list distinct layer indices below num_layers={info['num_layers']}, "
                      f"got {layers!r}")
        if not isinstance(info.get("gated", False), bool):
            raise bad(f"{side}: 'gated' must be true or false, got {info['gated']!r}")
        if info["embed_dim"] % info["heads"]:
            raise bad(f"{side}: embed_dim {info['embed_dim']} is not a multiple of heads {info['heads']}")
    task = meta.get("task")
    if task is not None and not (isinstance(task, dict) and task.get("name") in TUNED_TASKS
                                 and isinstance(task.get("options"), dict)):
        raise bad(f"'task' must record a task name among {TUNED_TASKS} and its options, got {task!r}")
    backbone = meta.get("backbone")
    if backbone is not None and not (isinstance(backbone, dict) and isinstance(backbone.get("path"), str)
                                     and isinstance(backbone.get("sha256"), str)):
        raise bad(f"'backbone' must record the path and sha256 of a file, got {backbone!r}")


def _check_backbone(prompts: str, meta: dict, backbone: Optional[str], force: str):
    """A prompt file exported from a prompt-only checkpoint records the backbone it was tuned on (path and
    sha256): `backbone`, the file whose weights are in use, must be that one. `force` names the way out."""
    trained_on = meta.get("backbone")
    if not trained_on:
        return  # exported from a full checkpoint: nothing recorded to compare with
    if not backbone:
        logger.warning("%s was tuned on backbone %s; the file of the model's backbone is unknown, so it is not "
                       "compared", prompts, trained_on["path"])
        return
    if not os.path.isfile(backbone):
        raise ValueError(f"{prompts} was tuned on backbone {trained_on['path']}; the backbone in use, {backbone}, "
                         f"is no longer there to compare with it: {force} to use the prompts anyway")
    ours = file_fingerprint(backbone)["sha256"]
    if ours != trained_on["sha256"]:
        raise ValueError(f"{prompts} was tuned on backbone {trained_on['path']} (sha256 {trained_on['sha256'][:12]}), "
                         f"not on {backbone} (sha256 {ours[:12]}): {force} to use them anyway")


def _check_fits(path: str, side: str, info: dict, cfg, target: str = "the model"):
    have = _side_shape(_stacks(cfg)[side])
    diff = [f"{k} {info[k]} in the file vs {have[k]} in {target}" for k in have if info[k] != have[k]]
    if diff:
        raise ValueError(f"{path} was made for another architecture ({side}: {', '.join(diff)})")


def attach_prompts(model, prompts: Union[str, Sequence[str]], force_backbone: bool = False,
                   bpe_dir: Optional[str] = None):
    """Load prompt file `prompts`, check it against `model` (check_prompts) and make its prompts the active
    ones on the model's backbone; sides the file lacks lose their prompts.

    A list of files loads them all; each sample then names the one it uses by its index in the list, in
    net_input["prompt_ids"] (one batch mixing prompt files: OFAPredictor.mixed)."""
    if isinstance(prompts, (str, os.PathLike)):
        model.set_prompts(check_prompts(model, prompts, load_prompt_file(prompts), force_backbone, bpe_dir))
    else:
        model.set_prompts([check_prompts(model, path, load_prompt_file(path), force_backbone, bpe_dir)
                           for path in prompts])


def check_prompts(model, path: str, prompts: PromptFile, force_backbone: bool = False,
                  bpe_dir: Optional[str] = None) -> PromptSet:
    """The tensors of `prompts` (loaded from file `path`), once checked against `model`: its architecture, the
    dict.txt of `bpe_dir` if given, and, unless forced, the backbone the prompts were tuned on."""
    _check_vocabulary(path, prompts.record, bpe_dir)
    for side in prompts.tensors:
        _check_fits(path, side, prompts.record["sides"][side], model.cfg)
    if not force_backbone:
        # load_model records the file it read the backbone from; in training it is --backbone
        in_use = getattr(model, "backbone_file", None) or model.cfg.backbone
        _check_backbone(path, prompts.record, in_use, "pass force_backbone=True")
    return prompts.tensors


def merge_prompts(backbone: str, prompts: str, out: str, force_backbone: bool = False):
    """One checkpoint with backbone and prompts (OFA's table layout), for tools that want a single file."""
    kv, meta = load_prompt_file(prompts)
    state = read_checkpoint(backbone)
    if not force_backbone:
        _check_backbone(prompts, meta, backbone, "pass --force-backbone (force_backbone=True)")
    if BACKBONE_KEY in state["model"]:
        raise ValueError(f"{backbone} is a prompt-only checkpoint, not a backbone")
    args = model_args(state, backbone)
    gated = {bool(info.get("gated")) for info in meta["sides"].values()}
    if len(gated) > 1:  # the checkpoint's --prompt-gate is one option for both sides
        raise ValueError(f"{prompts}: one side is gated, the other not; a checkpoint's --prompt-gate covers both")
    gated = gated.pop()
    for side, info in meta["sides"].items():
        _check_fits(prompts, side, info, config_from(args), backbone)
        # kept in float32 even in an fp16 checkpoint: folded prompts lose ~1e-3 in half precision
        state["model"][PROMPT_KEYS[side] + "embedding.weight"] = unfold(kv[side], info["layers"]).float()
        if gated:  # the file holds the factor tanh(g): the checkpoint the parameter g
            state["model"][PROMPT_KEYS[side] + "gate"] = _gate_parameter(prompts, kv[side], info["layers"])
        # the checkpoint records OFA's flat options (--encoder-prompt-length, ...): written by their names
        for name, value in (("prompt", True), ("prompt_type", "prefix"), ("prompt_length", info["length"]),
                            ("prompt_projection", False), ("prompt_layers", ",".join(map(str, info["layers"])))):
            setattr(args, f"{side}_{name}", value)
    args.prompt_gate, args.prompt_residual = gated, False  # the residual MLP is folded into the table
    store_model_args(state, args)
    _atomic(out, lambda tmp: torch.save(state, tmp))


def _gate_parameter(prompts: str, kv: dict, layers) -> torch.Tensor:
    factor = torch.stack([kv[layer][2] for layer in layers]).float()
    if factor.abs().max() >= 1:
        raise ValueError(f"{prompts}: gate factors must lie strictly between -1 and 1 (they are tanh of the gate), "
                         f"got {factor.abs().max().item():.4f}")
    return torch.atanh(factor)


def _atomic(out: str, write):
    """Write through a temporary file in the same folder, so a failure never leaves a partial `out`."""
    with atomic_path(out, "-" + os.path.basename(out)) as tmp:
        write(tmp)


def main(argv=None):
    run(parse_args(argv))


def run(args: argparse.Namespace):
    if args.command == "export":
        meta = export_prompts(args.checkpoint, args.out)
        print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes): " + ", ".join(
            f"{side} length {s['length']} on layers {s['layers']}" for side, s in meta["sides"].items()))
    else:
        merge_prompts(args.backbone, args.prompts, args.out, args.force_backbone)
        print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
