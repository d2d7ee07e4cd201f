"""The start-up of a run around its task: what fairseq-train and fairseq-generate need done once, beside the
task's own job of building samples, models and generators. OFATask calls it at the three moments of fairseq's
start-up: `configure_run` when fairseq sets the task up (before the dictionary is built), `build_for_run`
around every model fairseq builds, and `prepare_for_first_epoch` once fairseq-train has loaded its checkpoint.

fairseq-train: refusals of options that would change nothing, the --save-dir lock, a damaged file to resume
from, --bf16 without a TPU, the learning-rate schedule's length, stopping on SIGTERM and Ctrl-C, the image
feature cache, --prompt-init. fairseq-generate --path: the task settings (and --prompt-file) of the checkpoints,
each checkpoint's weights read from the version whose settings were taken, the prompt file's prompts and the
EMA weights put on the model."""
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch

from ..checkpoint import check_resume_file, claim_save_dir
from ..fairseq_compat.config import (
    evaluated_paths,
    explicit_options,
    ignore_unused_valid_subsets,
    root_of,
    save_dir,
    section,
)
from ..fairseq_compat.patches import bf16_without_tpu, stop_after_update_on_sigint, stop_after_update_on_sigterm
from ..file_version import check_unchanged, file_version
from ..metrics.scorers import use_task_scorer
from ..models.image_cache import ImageFeatureCache
from ..models.prompt_init import PROMPT_INITS
from ..models.tuning import prepare_for_training
from ..prompt_file import PromptFile, check_prompts, load_prompt_file
from ..schedule import plan_lr_schedule
from . import ema
from .saved_settings import SettingsError, apply_saved_settings

logger = logging.getLogger(__name__)


@dataclass
class RunStart:
    """What the task's set-up read that the models built later must match, and how far the start-up is."""
    # fairseq-generate --path: (path, version) of the checkpoints whose task settings were taken, in fairseq's
    # loading order
    checkpoints: List[Tuple[str, Optional[tuple]]] = field(default_factory=list)
    prompt_file: Optional[Tuple[str, PromptFile]] = None  # fairseq-generate --prompt-file, read once, at set-up
    models_built: int = 0  # models built from --path checkpoints so far
    prepared: bool = False  # fairseq-train: the model prepared for training (prepare_for_first_epoch)


# --- setting the task up -----------------------------------------------------------------------------------
def configure_run(cfg, task_cls, from_checkpoint: bool) -> RunStart:
    """When fairseq sets task `task_cls` up with its options `cfg`: fairseq-generate's settings taken from its --path
    checkpoint (or --prompt-file), options that cannot work refused, fairseq's configuration adjusted."""
    if cfg.zero_shot:
        raise ValueError("--zero-shot (OFA's unconstrained zero-shot generation) is not implemented: drop it; "
                         "fairseq-generate evaluates a pretrained checkpoint (ofa_large.pt) on this task with the "
                         "task's own inference (candidate answers, location bins), its settings from the command "
                         "line")
    start = RunStart()
    recorded = None
    if cfg.prompt_file:
        start.prompt_file = (cfg.prompt_file, load_prompt_file(cfg.prompt_file))
        recorded = start.prompt_file[1].record.get("task")
        if recorded is not None and recorded["name"] != task_cls.task_name():
            raise SettingsError(f"--prompt-file {cfg.prompt_file} holds prompts for --task {recorded['name']}, not "
                                f"--task {task_cls.task_name()}")
    if not from_checkpoint:  # fairseq-generate --path: the checkpoint's task settings
        start.checkpoints = apply_saved_settings(
            cfg, task_cls, prompt_record=(cfg.prompt_file, recorded) if cfg.prompt_file else None)
    if not cfg.bpe_dir:
        raise ValueError(f"--bpe-dir is required by --task {task_cls.__name__}: the folder holding OFA's dict.txt "
                         "(fairseq-generate also takes bpe_dir from --model-overrides, as OFA's scripts pass it)")
    check_bpe_dir(cfg.bpe_dir, cfg.text_tokenizer)
    check_precision(cfg)
    ignore_unused_valid_subsets(cfg)  # --data names TSV files, not a folder of binarized valid* splits
    # fairseq-generate without --scoring (OFA's command lines): the task's metric
    use_task_scorer(cfg, explicit_options())
    return start


def check_bpe_dir(bpe_dir: str, tokenizer: str):
    """--bpe-dir must hold what the dictionary and the tokenizer read, before anything is built from it."""
    needed = ("dict.txt", "encoder.json", "vocab.bpe") if tokenizer == "gpt2" else ("dict.txt",)
    remedy = f"give the folder holding OFA's {', '.join(needed)} (OFA's utils/BPE)"
    if not os.path.isdir(bpe_dir):
        raise SettingsError(f"--bpe-dir {bpe_dir}: no such folder; {remedy}")
    missing = [name for name in needed if not os.path.isfile(os.path.join(bpe_dir, name))]
    if missing:
        words = "; a word vocabulary needs only dict.txt (--text-tokenizer word)" if tokenizer == "gpt2" else ""
        raise SettingsError(f"--bpe-dir {bpe_dir} has no {', '.join(missing)}: {remedy}{words}")


def check_precision(task_cfg):
    """--fp16 (the paper configurations' default) needs a CUDA GPU: without one fairseq-train fails after building
    the model ("Found no NVIDIA driver"), and fairseq-generate with --cpu on the first batch (a FloatTensor input to
    a half model). Refused here, at the task's set-up, which both run before anything else. fairseq-train with
    --cpu keeps fairseq's own mixed precision on the CPU (float32 master weights), which works."""
    common = section(task_cfg, "common")
    if common is None or not (common.get("fp16") or common.get("memory_efficient_fp16")):
        return
    flag = "--fp16" if common.get("fp16") else "--memory-efficient-fp16"
    generating = bool(evaluated_paths(task_cfg))
    if common.get("cpu") and generating:
        where = "and fairseq-generate with --cpu halves the model but not its inputs"
    elif not common.get("cpu") and not torch.cuda.is_available():
        where = "and torch finds no CUDA GPU here"
    else:
        return
    raise SettingsError(f"{flag} runs in half precision on a CUDA GPU, {where}: leave it out (a YAML configuration "
                        f"of scripts/train.sh or evaluate.sh: the override {flag[2:]}=false) and run with --cpu, or "
                        "compute in bfloat16 on the CPU with --autocast bf16 (fairseq-generate: --model-overrides "
                        "\"{'autocast': 'bf16'}\")")


# --- building a model ------------------------------------------------------------------------------------
def build_for_run(task, model_cfg, from_checkpoint: bool, build: Callable):
    """fairseq's building of a model (`build()`), with the run's start-up around it: fairseq-train's
    (`from_checkpoint` False: before its Trainer is built and loads a checkpoint), or that of a model of
    fairseq-generate's --path (built before the checkpoint's weights are loaded into it)."""
    if from_checkpoint:
        return _build_checkpoint_model(task, build)
    start_training(task, model_cfg)
    model = build()
    if task.cfg.image_feature_cache != "none":
        attach_image_cache(task, model)
    return model


def start_training(task, model_cfg):
    """fairseq-train, before anything is built; `model_cfg` is its cfg.model."""
    if task.cfg.prompt_file:
        raise SettingsError("--prompt-file is for fairseq-generate (evaluating a prompt file on a backbone); "
                            "training starts from --finetune-from-model / --restore-file")
    ema.refuse_ema_eval(task.cfg)
    claim_save_dir(model_cfg)
    check_resume_file(model_cfg)
    bf16_without_tpu(model_cfg)
    root = root_of(task.cfg)
    if root is not None:  # fairseq-train's whole configuration (none for a task built in Python)
        plan_lr_schedule(task, root)
        stop_after_update_on_sigterm(root)
        stop_after_update_on_sigint(root)


def attach_image_cache(task, model):
    """--image-feature-cache: valid only while the ResNet is frozen (OFAModel.train keeps it in eval mode then)
    and the images are preprocessed the same way every epoch (the task's images have no random augmentation)."""
    resnet = model.encoder.embed_images
    if model.tuning == "finetune" or any(p.requires_grad for p in resnet.parameters()):
        raise SettingsError(f"--image-feature-cache keeps the ResNet's features, which are the same every epoch "
                            f"only while the ResNet is frozen (prompt tuning, adapters, BitFit); --tuning-method "
                            f"{model.tuning} trains it: leave the cache out")
    path = os.path.join(save_dir(task.cfg), "image_features.npy") if task.cfg.image_feature_cache == "disk" else None
    model.encoder.image_cache = task.image_cache = ImageFeatureCache(
        task.cfg.image_feature_cache_mb, path, str(task.cfg.image_feature_cache_dtype))


def _build_checkpoint_model(task, build):
    # fairseq builds the models of --path in order, each after reading its checkpoint (its weights are loaded
    # next): the file must be the version whose settings the task took
    start = task.start
    index, start.models_built = start.models_built, start.models_built + 1
    path, version = start.checkpoints[index] if index < len(start.checkpoints) else (None, None)
    if path is not None:
        check_unchanged(path, version, file_version(path) if os.path.isfile(path) else None,
                        "between fairseq-generate's reading of its task settings and of its weights")
    model = build()
    model.start_file = path  # what fairseq loads next is the --path file, not the one its training started from
    if start.prompt_file is not None:
        attach_prompt_file(model, *start.prompt_file, backbone=path, bpe_dir=task.cfg.bpe_dir)
    if getattr(task.cfg, "ema_eval", False):
        ema.evaluate_ema_of(model, ema.generate_checkpoint(task.cfg, index))
    return model


def attach_prompt_file(model, path: str, prompts: PromptFile, backbone: Optional[str], bpe_dir: Optional[str]):
    """--prompt-file: the prompts of file `path` (read at the task's set-up) on a --path model built from `backbone`
    (whose weights fairseq loads next; the prompts are not among them)."""
    if model.encoder.prompts is not None or model.decoder.prompts is not None:
        raise SettingsError(f"--prompt-file {path} brings the prompts, but the --path checkpoint {backbone} has "
                            "its own: give --path the backbone they were tuned on (e.g. ofa_base.pt)")
    model.backbone_file = backbone
    try:
        model.set_prompts(check_prompts(model, path, prompts, force_backbone=model.cfg.force_backbone,
                                        bpe_dir=bpe_dir))
    except ValueError as e:
        raise SettingsError(
            f"--prompt-file: {e} (fairseq-generate: --model-overrides \"{{'force_backbone': True}}\")"
            if "force_backbone" in str(e) else f"--prompt-file: {e}") from None
    logger.info("prompts from %s attached to the model of %s", path, backbone)


# --- fairseq-train's first epoch ---------------------------------------------------------------------------
def prepare_for_first_epoch(model):
    """Once fairseq-train has loaded its checkpoint (the first epoch's start): the tuning method's freeze,
    --prompt-init (a method, or a prompt file's prompts) on fresh prompts, the trainable share logged."""
    start = model.cfg.prompt_init
    prompt_file = None
    if start not in PROMPT_INITS and model.fresh_prompts:
        if not os.path.isfile(start):
            raise SettingsError(f"--prompt-init={start}: neither one of {', '.join(PROMPT_INITS)} nor a prompt "
                                "file (python -m ofa_prompt.prompt_file export)")
        prompt_file = load_prompt_file(start).tensors
    prepare_for_training(model, prompt_file)
