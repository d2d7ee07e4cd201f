"""fairseq-generate --path: the task is set up with the settings its checkpoint was trained with.

fairseq-generate (and fairseq-interactive) build the task from the command line before they read the
checkpoint, so a task option left out (--add-caption, --prompt-type, --patch-image-size, --selected-cols,
...) would silently fall back to its default and the model would be scored on inputs it was never trained
on. OFA's evaluate.py builds its task from the checkpoint's saved configuration instead; OFATask.setup_task
does the same through `apply_saved_settings`, before the dictionary is built. Nothing changes where the
configuration names no --path (fairseq-train), or where fairseq builds the task from the checkpoint itself
(setup_task(..., from_checkpoint=True), e.g. fairseq-validate).

Each option of --task gets its value from the first of:
1. `--model-overrides`: a key that is an option of the task (or one inside a "task" mapping) sets it, as
   OFA's evaluate scripts pass data, bpe_dir, selected_cols, ans2label_file, eval_cider; other keys are
   left to fairseq, which applies them to the model. This is also how to turn off a flag the checkpoint
   was trained with: --model-overrides "{'add_caption': False}".
2. the command line, where the option is given explicitly (fairseq_compat.config.explicit_options: its
   option string stands before a bare `--` as `--name` or `--name=value`). The positional data argument is
   always explicit. An option given both here and in --model-overrides, with different values, is an error.
3. the checkpoint's saved task configuration (the first --path file, --checkpoint-suffix applied), for
   the options it records, except those in NOT_FROM_CHECKPOINT; the other files of an ensemble must be
   of the same task and agree on every option taken this way (one task feeds all of them);
4. the option's default.

NOT_FROM_CHECKPOINT holds the options whose saved value means nothing for this evaluation (each with its
reason): `data` names the training TSVs; `bpe_dir` and `ans2label_file` name files on the training
machine, relative to where training ran (OFA's checkpoints record ../../utils/BPE), so this run names
its own; the rest concern validation during training, the training schedule and objective, or this run's
inference method and memory. Options that describe what the model was trained on (e.g. vqa_gen's
--unconstrained-training, open-ended answers) do come from the checkpoint, as in OFA.

The checkpoint's task decides what it gives: its own task gives all of the above; a pretraining task
(PRETRAINING_TASKS: OFA's `ofa` and `unify_task`, this plugin's `mix`, i.e. zero-shot evaluation) gives
only the options that fix the dictionary and the image input (the mix's shared options but bpe_dir);
any other task is an error naming both tasks.

Two lines are logged: the options taken from the checkpoint where they change what the command line
gave, and every option whose value differs from the checkpoint's (each with where it came from).

Checkpoint formats: OFA's (an `args` Namespace holding every option, or a `cfg` whose `task` holds the
task's options), and this plugin's full and prompt-only checkpoints (fairseq-train's `cfg`; a prompt-only
file holds it too, so the backbone file is not read). The file is opened with mmap and weights_only:
no tensor data is read and no pickled code runs.

Errors are `SettingsError`s, input errors that the command-line tools print as one line (ofa_prompt.errors).
"""
import ast
import logging
import os
import zipfile
from dataclasses import fields
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..checkpoint import require_checkpoint, saved_task, unreadable
from ..errors import InputError
from ..fairseq_compat.config import evaluated_paths, explicit_options, root_of
from ..file_version import file_version

logger = logging.getLogger(__name__)

NOT_FROM_CHECKPOINT = {
    "data": "it names the training TSVs; evaluation reads the data argument (or data in --model-overrides)",
    "bpe_dir": "a folder on the training machine, relative to where training ran",
    "ans2label_file": "a file on the training machine, relative to where training ran",
    "eval_cider_cached_tokens": "a file, and one only validation during training checks",
    "skip_bad_rows": "how this run treats bad rows of its own data: a test set is not cut silently",
    "prompt_file": "what this run evaluates",
    "no_tsv_index": "how this run reads its own files",
    "valid_batch_size": "memory only, on the machine that evaluates",
    "val_inference_type": "this run's inference method, like --beam (OFA's evaluate.py sets it from "
                          "--beam-search-vqa-eval, never from the checkpoint)",
    "beam_search_vqa_eval": "this run's inference method (OFA's evaluate.py flag)",
    "scst": "the training objective (self-critical training)", "scst_args": "the training objective",
    "eval_acc": "validation during training", "eval_cider": "validation during training",
    "eval_bleu": "validation during training", "eval_args": "validation during training",
    "eval_print_samples": "validation during training", "uses_ema": "validation during training",
    "warmup_ratio": "the training schedule",
    "ema_eval": "this run's choice of weights", "zero_shot": "this run's choice (refused)",
}
PRETRAINING_TASKS = ("mix", "ofa", "unify_task")
# one dictionary and one image size for every batch: a pretraining mix (--task mix) sets these for all its
# tasks, and a task evaluating a pretrained checkpoint takes them from it
SHARED = ("bpe_dir", "text_tokenizer", "code_dict_size", "num_bins", "patch_image_size",
          "imagenet_default_mean_and_std")
OVERRIDES, COMMAND_LINE, CHECKPOINT, DEFAULT = "--model-overrides", "command line", "checkpoint", "default"


class SettingsError(InputError, ValueError):
    """A checkpoint that cannot be evaluated as asked, or contradictory options: a one-line message."""


# --- small pure functions ---------------------------------------------------------------------------
def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def same(a, b) -> bool:
    """Equal values, also across the types a value may come in (96 and "96", an enum and its name)."""
    return a == b or str(getattr(a, "value", a)) == str(getattr(b, "value", b))


def inherited_keys(requested: str, trained: Optional[str], keys: Iterable[str], path: str = "checkpoint") -> Set[str]:
    """The options of --task `requested` (`keys`) that a checkpoint trained with --task `trained` gives."""
    keys = {k for k in keys if not k.startswith("_") and k not in NOT_FROM_CHECKPOINT}
    if trained is None:
        return set()
    if trained == requested:
        return keys
    if trained in PRETRAINING_TASKS:
        return keys & set(SHARED)
    raise SettingsError(f"{path} was trained for --task {trained}, not --task {requested}: evaluate it with "
                        f"--task {trained}, or give a checkpoint trained for {requested}")


def merge(given: Dict[str, Any], saved: Dict[str, Any], inherited: Set[str], explicit: Set[str],
          overrides: Dict[str, Any]) -> Dict[str, Tuple[Any, str]]:
    """(value, source) of each option: `given` holds the command line's values (defaults included),
    `saved` the checkpoint's, `inherited` the keys it may give, `explicit` the keys given on the command
    line, `overrides` the task keys of --model-overrides."""
    out = {}
    for key, value in given.items():
        if key in overrides:
            if key in explicit and not same(value, overrides[key]):
                where = "the data argument" if key == "data" else flag(key)
                raise SettingsError(f"{where} is {value!r} on the command line but {overrides[key]!r} in "
                                    f"--model-overrides: give one of them")
            out[key] = (overrides[key], OVERRIDES)
        elif key in explicit:
            out[key] = (value, COMMAND_LINE)
        elif key in inherited and key in saved:
            out[key] = (saved[key], CHECKPOINT)
        else:
            out[key] = (value, DEFAULT)
    return out


def differences(chosen: Dict[str, Tuple[Any, str]], saved: Dict[str, Any], inherited: Set[str],
                none_means: Optional[Dict[str, Any]] = None):
    """[(key, value, trained value, source)] for the options whose value differs from the checkpoint's;
    `none_means` gives what None stands for, per option (--selected-cols: the task's default columns)."""
    none_means = none_means or {}

    def effective(key, value):
        return none_means.get(key) if value is None and key in none_means else value

    return [(k, v, saved[k], source) for k, (v, source) in chosen.items()
            if k in inherited and k in saved and not same(effective(k, v), effective(k, saved[k]))]


def _shown(value) -> str:
    return str(getattr(value, "value", value))


def difference_line(path: str, diffs) -> Optional[str]:
    """The one line reporting `differences`, or None when there are none."""
    if not diffs:
        return None
    where = {COMMAND_LINE: "the command line"}
    items = "; ".join(f"{flag(k)}={_shown(v)} (trained with {_shown(t)}, from {where.get(source, source)})"
                      for k, v, t, source in diffs)
    return f"task settings that differ from training ({path}): {items}"


def taken_line(path: str, trained: str, chosen: Dict[str, Tuple[Any, str]], given: Dict[str, Any]) -> Optional[str]:
    """The one line naming the options the checkpoint set to something else than the command line gave."""
    taken = [f"{flag(k)}={_shown(v)}" for k, (v, source) in chosen.items()
             if source == CHECKPOINT and not same(v, given[k])]
    if not taken:
        return None
    return f"task settings from {path} (trained with --task {trained}): {', '.join(taken)}"


def task_overrides(text: str, keys: Iterable[str]) -> Dict[str, Any]:
    """The task options among --model-overrides `text` (a Python dict literal, as fairseq reads it)."""
    try:
        overrides = ast.literal_eval(text or "{}")
    except (ValueError, SyntaxError) as e:
        raise SettingsError(f"--model-overrides={text}: not a Python dict literal ({e})") from e
    if not isinstance(overrides, dict):
        raise SettingsError(f"--model-overrides={text}: not a dict")
    keys = set(keys)
    out = {k: v for k, v in overrides.items() if k in keys}
    nested = overrides.get("task")
    if isinstance(nested, dict):  # fairseq's form {"task": {...}} for the task's own group
        out.update({k: v for k, v in nested.items() if k in keys})
    return out


# --- reading checkpoints and setting the task up ----------------------------------------------------
def read_state(path: str, option: str = "--path") -> dict:
    """A checkpoint's top-level dict without its tensors' data (mmap) and without running pickled code;
    `option` names where the file was given, for the messages."""
    if not os.path.isfile(path):
        raise SettingsError(f"checkpoint not found: {path} ({option})")
    require_checkpoint(path, option)
    try:
        # mmap needs the zip format torch.save writes; older pickles are read whole
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # truncated, corrupted, or not a checkpoint
        why = unreadable(path) or f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise SettingsError(f"cannot read checkpoint {path} ({option}): {why}") from e


def checkpoint_files(root) -> List[str]:
    from fairseq import utils
    from fairseq.checkpoint_utils import get_maybe_sharded_checkpoint_filename
    from fairseq.file_io import PathManager

    suffix = (root.checkpoint.checkpoint_suffix or "") if "checkpoint" in root else ""
    shards = root.checkpoint.checkpoint_shard_count if "checkpoint" in root else 1
    return [PathManager.get_local_path(get_maybe_sharded_checkpoint_filename(p, suffix, 0, shards))
            for p in utils.split_paths(root.common_eval.path)]


def checked(task_name: str, values: Dict[str, Any], source: str) -> Dict[str, Any]:
    """`values` type-checked and converted as the options of --task `task_name` (fairseq's task config
    holds them untyped: "96" would stay a string, an unknown --prompt-type would pass)."""
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    dataclass_ = TASK_DATACLASS_REGISTRY.get(task_name)
    known = {k: v for k, v in values.items() if dataclass_ and k in {f.name for f in fields(dataclass_)}}
    if not known:
        return dict(values)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(dataclass_), known)
    except OmegaConfBaseException as e:
        key = e.full_key or "?"
        raise SettingsError(f"{flag(key)}={values.get(key)!r} from {source} is not valid for --task {task_name}: "
                            f"{e.msg}") from e
    return {**values, **{k: getattr(merged[k], "value", merged[k]) for k in known}}


def apply_saved_settings(cfg, task_cls=None, argv: Optional[List[str]] = None,
                         prompt_record: Optional[Tuple[str, Optional[dict]]] = None) -> List[tuple]:
    """Set the options of task config `cfg` (fairseq-generate's, whose root names --path) by the rules
    of this module; `task_cls` is the task's class (its default columns), `argv` the command line without
    the program name (default: this process's). `prompt_record`: (file, its task record) of --prompt-file, whose
    record stands in for the first checkpoint's (a backbone records its pretraining). Returns the (path,
    version) of each --path checkpoint as read here, in fairseq's loading order: its weights must come from
    the same versions."""
    if not isinstance(cfg, DictConfig):
        return []
    root = root_of(cfg)
    if not evaluated_paths(cfg):
        return []  # fairseq-train, or a task built without a checkpoint to evaluate
    task_name = cfg._name
    given = {k: cfg[k] for k in cfg if not k.startswith("_")}
    explicit = explicit_options(argv) | ({"data"} if cfg.get("data") else set())
    overrides = task_overrides(root.common_eval.model_overrides, given)

    paths = checkpoint_files(root)
    versions = [(path, file_version(path)) if os.path.isfile(path) else (path, None) for path in paths]
    first, others = paths[0], paths[1:]
    trained, saved = saved_task(read_state(first))
    if prompt_record is not None and prompt_record[1] is not None:
        first, others = prompt_record[0], []  # the prompts feed every model of an ensemble the same inputs
        trained, saved = prompt_record[1]["name"], dict(prompt_record[1]["options"])
    elif prompt_record is not None:
        logger.warning("%s records no task (exported by an older version): the task settings come from %s and the "
                       "command line", prompt_record[0], first)
    inherited = inherited_keys(task_name, trained, given, first)
    if trained is None:
        logger.warning("%s records no task settings: all of them come from the command line", first)
    chosen = merge(given, saved, inherited, explicit, overrides)
    for other in others:  # one task feeds every model of an ensemble the same inputs
        other_task, other_saved = saved_task(read_state(other))
        for key in inherited_keys(task_name, other_task, given, other) & inherited:
            if chosen[key][1] == CHECKPOINT and key in other_saved and not same(other_saved[key], saved[key]):
                raise SettingsError(f"the checkpoints of --path differ in {flag(key)} ({saved[key]!r} in {first}, "
                                    f"{other_saved[key]!r} in {other}): give it on the command line")

    for source in (CHECKPOINT, OVERRIDES):
        values = checked(task_name, {k: v for k, (v, s) in chosen.items() if s == source},
                         first if source == CHECKPOINT else source)
        for key, value in values.items():
            cfg[key] = value
            chosen[key] = (value, source)

    taken = taken_line(first, trained, chosen, given)
    if taken:
        logger.info(taken)
    none_means = {"selected_cols": getattr(task_cls, "default_cols", None)}
    line = difference_line(first, differences(chosen, saved, inherited, none_means))
    if line:
        logger.warning(line)
    return versions
