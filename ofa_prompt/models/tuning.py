"""Which parameters train: prompt tuning, adapters, BitFit or full finetuning.

Every method but finetuning freezes the backbone completely (token embeddings and ResNet included),
so the optimizer only ever sees the method's own parameters.
"""
import logging

import torch.nn as nn
from timm.layers import DropPath

from ..tuning_methods import TUNING_METHODS
from .attention import MultiheadAttention
from .prompt_init import init_prompts

logger = logging.getLogger(__name__)


def resolve_tuning(cfg) -> str:
    """The method `--tuning-method auto` stands for, following OFA's flags."""
    if cfg.tuning_method != "auto":
        return cfg.tuning_method
    if cfg.encoder_prompt or cfg.decoder_prompt:
        return "prompt"
    if cfg.adapter:
        return "adapter"
    if cfg.bitfit:
        return "bitfit"
    return "finetune"


def is_prompt(name: str) -> bool:
    return "_prompt_encoder." in name


def is_trainable(name: str, method: str) -> bool:
    if method == "finetune":
        return True
    if method == "prompt":  # adapters, if also built (--adapter), train with the prompts as in OFA
        return is_prompt(name) or ".adapter." in name
    if method == "adapter":
        return ".adapter." in name
    if method == "bitfit":  # every bias of the transformer; the ResNet keeps its BatchNorm frozen
        return name.endswith("bias") and "embed_images." not in name
    raise ValueError(f"unknown tuning method {method!r}; choose one of {', '.join(TUNING_METHODS)}")


def apply_tuning(model, method: str, cfg=None):
    """Set requires_grad for `method`; returns (trainable, total) parameter counts."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_trainable(name, method))
    if method == "finetune" and cfg is not None:
        if cfg.freeze_encoder_embedding:
            model.encoder.embed_tokens.weight.requires_grad_(False)
        if cfg.freeze_decoder_embedding:
            model.decoder.embed_tokens.weight.requires_grad_(False)
    if method != "finetune" and cfg is not None and cfg.no_backbone_dropout:
        disable_backbone_dropout(model)
    return count_trainable(model)


def disable_backbone_dropout(model):
    """--no-backbone-dropout (SuperPos-Prompt): the frozen backbone computes the same function in training as in
    evaluation, so the prompts are not tuned against noise they never meet at test time. Dropout modules,
    attention dropout and stochastic depth all go to 0; the prompt modules keep their own dropout."""
    for name, module in model.named_modules():
        if is_prompt(name + "."):
            continue
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(module, MultiheadAttention):
            module.dropout = 0.0
        elif isinstance(module, DropPath):
            module.drop_prob = 0.0


def prepare_for_training(model, prompt_file=None):
    """What happens once when training starts, after fairseq has loaded the checkpoint (the task's
    begin_epoch calls it): the tuning method's freeze is enforced, fresh prompts get --prompt-init (with
    `prompt_file`, the keys/values of the prompt file it names, which the task reads), and the trainable
    share is reported."""
    method = model.tuning
    wrong = [n for n, p in model.named_parameters() if p.requires_grad != is_trainable(n, method)
             and not (method == "finetune" and "embed_tokens" in n)]
    if wrong:
        logger.warning("%d parameters had the wrong requires_grad for --tuning-method %s (e.g. %s); "
                       "re-applying the freeze", len(wrong), method, wrong[0])
        apply_tuning(model, method, model.cfg)
    if model.cfg.prompt_init != "random" and model.fresh_prompts:
        init_prompts(model, model.cfg.prompt_init, model.cfg.prompt_init_seed, prompt_file)
        logger.info("prompts initialized with --prompt-init=%s", model.cfg.prompt_init)
    trainable, total = count_trainable(model)
    logger.info("tuning method %s: %d of %d parameters trainable (%.3f%%)", method, trainable, total,
                100.0 * trainable / max(total, 1))


def count_trainable(model):
    # tied weights appear once in parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
