"""`load_model`: an official OFA checkpoint or one of the plugin's, as a model in eval mode."""
import os
from types import SimpleNamespace
from typing import Optional

from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY

from . import load
from .checkpoint import BACKBONE_KEY, model_args, read_checkpoint
from .data.dictionary import build_ofa_dictionary
from .models.ofa import OFAModel


def _dictionary(args, vocab_rows: int) -> Dictionary:
    bpe_dir = getattr(args, "bpe_dir", None)
    dict_path = os.path.join(bpe_dir, "dict.txt") if bpe_dir else None
    if dict_path and os.path.isfile(dict_path):
        return build_ofa_dictionary(dict_path, getattr(args, "code_dict_size", 8192), getattr(args, "num_bins", 1000))
    # Without the BPE files the model still needs the vocabulary size and the special indices.
    d = Dictionary()
    for i in range(vocab_rows - len(d)):
        d.add_symbol(f"<token_{i}>")
    return d


def load_model(path: str, overrides: Optional[dict] = None) -> OFAModel:
    """Load an OFA checkpoint (official or this plugin's) in eval mode.

    `overrides` replaces recorded arguments, e.g. {"bpe_dir": "/data/ofa/BPE"} to build the real
    dictionary (otherwise one of the checkpoint's size is used).
    """
    load()  # the API's explicit loading of the plugin (as `ofa_prompt.load_model` does): torch may read OFA's pickles
    state = read_checkpoint(path)
    args = model_args(state, path)
    cfg = state.get("cfg")
    task_cfg = cfg.get("task") if isinstance(cfg, dict) else None
    for key in ("bpe_dir", "code_dict_size", "num_bins"):  # fairseq-train keeps task options apart
        if task_cfg and key in task_cfg and getattr(args, key, None) is None:
            setattr(args, key, task_cfg[key])
    for key, value in (overrides or {}).items():
        setattr(args, key, value)
    arch = getattr(args, "arch", None) or getattr(args, "_name", None)
    if arch in ARCH_CONFIG_REGISTRY:
        ARCH_CONFIG_REGISTRY[arch](args)
    weights = state["model"]
    prompt_only = BACKBONE_KEY in weights
    rows = weights[BACKBONE_KEY]["vocab"] if prompt_only else weights["encoder.embed_tokens.weight"].size(0)
    dictionary = _dictionary(args, rows)
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    model = OFAModel.build_model(args, task)
    model.start_file = os.path.abspath(path)
    model.load_state_dict(weights, strict=True)
    # the file the backbone weights were read from (loading a prompt-only checkpoint set cfg.backbone to
    # it): prompt_file.check_prompts checks prompt files against it
    model.backbone_file = model.cfg.backbone if prompt_only else os.path.abspath(path)
    return model.eval()
