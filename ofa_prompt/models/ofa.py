"""The OFA model with prefix prompts, registered with fairseq as `ofa_prompt` and as OFA's own `ofa` (so
official checkpoints, which record `_name: ofa_base` etc., load through stock fairseq); the architectures
are in archs.py, the configuration in config.py.
"""
import logging
import os
from typing import Optional, Sequence, Union

import torch
from fairseq.models import FairseqEncoderDecoderModel, register_model
from omegaconf import DictConfig

from ..checkpoint import upgrade_state_dict
from ..fairseq_compat.config import section
from .config import OFAConfig, config_from
from .decoder import OFADecoder
from .encoder import OFAEncoder
from .prompt import PromptMix, PromptSet, StaticPrompt
from .stack import embedding
from .tuning import apply_tuning, is_prompt, resolve_tuning

logger = logging.getLogger(__name__)


def pretrained_checkpoint(args) -> Optional[str]:
    """The file fairseq-train starts from (--finetune-from-model, or --restore-file unless it is the
    default checkpoint_last.pt); fairseq-train hands the model only its own config node, so look at
    the whole config it belongs to."""
    ckpt = section(args, "checkpoint") if isinstance(args, DictConfig) else args
    restore = getattr(ckpt, "restore_file", None)
    return getattr(ckpt, "finetune_from_model", None) or (
        restore if restore and os.path.basename(restore) != "checkpoint_last.pt" else None)


@register_model("ofa_prompt", dataclass=OFAConfig)
class OFAModel(FairseqEncoderDecoderModel):
    def __init__(self, cfg: OFAConfig, encoder, decoder):
        super().__init__(encoder, decoder)
        self.cfg = cfg
        self.tuning = resolve_tuning(cfg)
        apply_tuning(self, self.tuning, cfg)
        # the tensors of the last checkpoint loaded that it lacked (None: none loaded, all are fresh)
        self.tensors_not_in_checkpoint = None
        # the checkpoint the weights are loaded from (fairseq-train's --restore-file / --finetune-from-model,
        # load_model's file) and the backbone the user named, if any: what a prompt-only checkpoint is read with
        self.start_file = self.given_backbone = None

    @classmethod
    def build_model(cls, args, task):
        cfg = config_from(args)
        start_file = pretrained_checkpoint(args)
        # --backbone (--model-overrides "{'backbone': ...}") is the user's word; the file the run starts from is
        # the backbone only if it is a whole model: a prompt-only one records its own (upgrade_state_dict)
        given_backbone = cfg.backbone
        if cfg.backbone is None:
            cfg.backbone = start_file
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        enc_emb = embedding(len(src_dict), cfg.encoder_embed_dim, src_dict.pad())
        if cfg.share_all_embeddings:
            if src_dict != tgt_dict:
                raise ValueError("--share-all-embeddings needs one dictionary for source and target")
            if cfg.encoder_embed_dim != cfg.decoder_embed_dim:
                raise ValueError("--share-all-embeddings needs --encoder-embed-dim == --decoder-embed-dim")
            dec_emb = enc_emb
        else:
            dec_emb = embedding(len(tgt_dict), cfg.decoder_embed_dim, tgt_dict.pad())
        model = cls(cfg, OFAEncoder(cfg, src_dict, enc_emb), OFADecoder(cfg, tgt_dict, dec_emb))
        model.start_file, model.given_backbone = start_file, given_backbone
        return model

    def forward(self, src_tokens, src_lengths, prev_output_tokens, patch_images=None, patch_masks=None,
                features_only=False, alignment_layer=None, return_all_hiddens=False, prompt_ids=None, image_keys=None,
                **kwargs):
        with torch.autocast(src_tokens.device.type, torch.bfloat16, enabled=self.cfg.autocast == "bf16"):
            encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, patch_images=patch_images,
                                       patch_masks=patch_masks, return_all_hiddens=return_all_hiddens,
                                       prompt_ids=prompt_ids, image_keys=image_keys)
            out, extra = self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only,
                                      alignment_layer=alignment_layer, return_all_hiddens=return_all_hiddens)
        return out.float(), extra  # the loss (log-softmax over the vocabulary) in float32

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.tuning != "finetune":
            # A frozen backbone must not drift: BatchNorm statistics stay as loaded.
            self.encoder.embed_images.eval()
        return self

    def max_positions(self):
        return self.encoder.max_positions(), self.decoder.max_positions()

    def full_state_dict(self):
        """The whole state dict (what `state_dict()` returns too). Checkpoints of a frozen backbone hold only
        the tuned tensors: fairseq-train's writer selects them (ofa_prompt.checkpoint.prompt_only_checkpoint)."""
        return self.state_dict()

    def set_prompts(self, kv: Union[PromptSet, Sequence[PromptSet]]):
        """Make these prompts the active ones, without reloading the backbone: {"encoder": {layer: (key, value)},
        "decoder": ...} as folded tensors [heads, length, head_dim] (ofa_prompt.prompt_file loads them from prompt
        files and checks them against the model: load_prompt_file, check_prompts); a side not in `kv` loses its
        prompts.

        A list of such sets loads them all (a PromptMix per side): each sample then names its set by index in
        net_input["prompt_ids"], so one batch can mix prompt files."""
        for side, stack in (("encoder", self.encoder), ("decoder", self.decoder)):
            if isinstance(kv, dict):
                module = StaticPrompt(kv[side]) if side in kv else None
            else:
                entries = [one.get(side, {}) for one in kv]
                module = PromptMix(entries) if any(entries) else None
            stack.replace_prompts(None if module is None else module.to(stack.layer_norm.weight))

    @property
    def fresh_prompts(self) -> bool:
        """No prompt tensor came from a checkpoint: --prompt-init applies (ofa_prompt.models.tuning)."""
        if self.tensors_not_in_checkpoint is None:
            return True
        return not any(is_prompt(k) for k in self.full_state_dict() if k not in self.tensors_not_in_checkpoint)

    def upgrade_state_dict_named(self, state_dict, name):
        # fairseq calls this with every state dict it is about to load into the model
        self.tensors_not_in_checkpoint = upgrade_state_dict(self, state_dict, name)


@register_model("ofa", dataclass=OFAConfig)
class OFALegacyModel(OFAModel):
    """OFA's registry name, so that official checkpoints (`_name: ofa_*`) build this model."""
