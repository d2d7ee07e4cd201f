"""Which parameters train: prompt tuning, adapters, BitFit or full finetuning.

Every method but finetuning freezes the backbone completely (token embeddings and ResNet included),
so the optimizer only ever sees the method's own parameters.
"""
import logging

logger = logging.getLogger(__name__)

TUNING_METHODS = ["auto", "prompt", "adapter", "bitfit", "finetune"]


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


def is_trainable(name: str, method: str) -> bool:
    if method == "finetune":
        return True
    if method == "prompt":  # adapters, if also built (--adapter), train with the prompts as in OFA
        return "_prompt_encoder." in name or ".adapter." in name
    if method == "adapter":
        return ".adapter." in name
    if method == "bitfit":  # every bias of the transformer; the ResNet keeps its BatchNorm frozen
        return name.endswith("bias") and "embed_images." not in name
    raise ValueError(f"unknown tuning method {method!r}; choose one of {TUNING_METHODS}")


def apply_tuning(model, method: str, cfg=None):
    """Set requires_grad for `method`; returns (trainable, total) parameter counts."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_trainable(name, method))
    if method == "finetune" and cfg is not None:
        for side in ("encoder", "decoder"):
            if getattr(cfg, f"freeze_{side}_embedding", False):
                getattr(model, side).embed_tokens.weight.requires_grad_(False)
    return count_trainable(model)


def count_trainable(model):
    # tied weights appear once in parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
