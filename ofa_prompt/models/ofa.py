"""The OFA model with prefix prompts, registered with fairseq.

Two registrations share one implementation:
* `ofa_prompt` with architectures `ofa_prompt_tiny` .. `ofa_prompt_huge`: the plugin's own name; the
  architectures preset the sizes *and* the switches every released OFA model uses.
* `ofa` with `ofa_tiny` .. `ofa_huge`: OFA's own names, so official checkpoints (which record
  `_name: ofa_base` etc.) load through stock fairseq, and OFA's run scripts keep their `--arch`.
  Like OFA, these archs preset sizes only; the switches come from the checkpoint or the command line.
"""
import dataclasses
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import FairseqEncoderDecoderModel, register_model, register_model_architecture
from omegaconf import DictConfig, open_dict

from ..checkpoint import upgrade_state_dict
from .decoder import OFADecoder
from .encoder import OFAEncoder
from .prompt_init import PROMPT_INITS
from .stack import embedding
from .resnet import RESNET_BLOCKS
from .tuning import TUNING_METHODS, apply_tuning, resolve_tuning

logger = logging.getLogger(__name__)

PROMPT_TYPES = ChoiceEnum(["prefix"])
AUTOCAST = ChoiceEnum(["none", "bf16"])


@dataclass
class OFAConfig(FairseqDataclass):
    # sizes (presets come from the architecture)
    encoder_embed_dim: int = field(default=768, metadata={"help": "encoder width"})
    encoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "encoder FFN hidden size"})
    encoder_layers: int = field(default=6, metadata={"help": "number of encoder layers"})
    encoder_attention_heads: int = field(default=12, metadata={"help": "encoder attention heads"})
    decoder_embed_dim: int = field(default=768, metadata={"help": "decoder width"})
    decoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "decoder FFN hidden size"})
    decoder_layers: int = field(default=6, metadata={"help": "number of decoder layers"})
    decoder_attention_heads: int = field(default=12, metadata={"help": "decoder attention heads"})
    resnet_type: str = field(default="resnet101", metadata={"help": f"image stem, one of {sorted(RESNET_BLOCKS)}"})
    # regularization
    activation_fn: str = field(default="gelu", metadata={"help": "FFN activation: gelu, gelu_fast, relu, tanh"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention probabilities"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    encoder_drop_path_rate: float = field(default=0.0, metadata={"help": "stochastic depth of the last encoder layer"})
    decoder_drop_path_rate: float = field(default=0.0, metadata={"help": "stochastic depth of the last decoder layer"})
    resnet_drop_path_rate: float = field(default=0.0, metadata={"help": "stochastic depth inside the ResNet"})
    # OFA's architectural switches (flags turn them on, as in OFA)
    encoder_normalize_before: bool = field(default=False, metadata={"help": "pre-norm encoder layers (required)"})
    decoder_normalize_before: bool = field(default=False, metadata={"help": "pre-norm decoder layers (required)"})
    layernorm_embedding: bool = field(default=False, metadata={"help": "LayerNorm on the token embeddings"})
    patch_layernorm_embedding: bool = field(default=False, metadata={"help": "LayerNorm on the image patch embeddings"})
    code_layernorm_embedding: bool = field(default=False, metadata={"help": "LayerNorm for image-code tokens"})
    add_type_embedding: bool = field(default=False, metadata={"help": "add text / image type embeddings"})
    no_scale_embedding: bool = field(default=True, metadata={"help": "do not scale embeddings by sqrt(dim)"})
    scale_attn: bool = field(default=False, metadata={"help": "LayerNorm on the attention outputs (NormFormer)"})
    scale_fc: bool = field(default=False, metadata={"help": "LayerNorm on the FFN hidden layer (NormFormer)"})
    scale_heads: bool = field(default=False, metadata={"help": "learned per-head output scales (NormFormer)"})
    scale_resids: bool = field(default=False, metadata={"help": "learned scale of the FFN residual"})
    attn_scale_factor: float = field(default=2.0, metadata={"help": "queries are scaled by (head_dim * this)^-1/2"})
    token_bucket_size: int = field(default=256, metadata={"help": "text relative-position buckets"})
    image_bucket_size: int = field(default=42, metadata={"help": "image relative-position grid size"})
    disable_entangle: bool = field(default=False, metadata={"help": "do not add target positions to decoder embeddings"})
    entangle_position_embedding: bool = field(default=False, metadata={"help": "add absolute positions to embeddings"})
    share_decoder_input_output_embed: bool = field(default=False, metadata={"help": "tie decoder input/output embeddings"})
    share_all_embeddings: bool = field(default=False, metadata={"help": "share encoder/decoder embeddings"})
    freeze_resnet: bool = field(default=False, metadata={"help": "frozen BatchNorm in the ResNet (OFA's option)"})
    sync_bn: bool = field(default=False, metadata={"help": "synchronized BatchNorm (eps 1e-3) in the ResNet"})
    max_source_positions: int = field(default=1024, metadata={"help": "maximum source length"})
    max_target_positions: int = field(default=1024, metadata={"help": "maximum target length"})
    # prompt tuning
    encoder_prompt: bool = field(default=False, metadata={"help": "add prefix prompts to encoder self-attention"})
    encoder_prompt_type: PROMPT_TYPES = field(default="prefix", metadata={"help": "prompt type (only 'prefix', as in OFA)"})
    encoder_prompt_length: int = field(default=100, metadata={"help": "encoder prompt tokens per layer (paper: 64)"})
    encoder_prompt_projection: bool = field(
        default=False, metadata={"help": "reparameterize encoder prompts: embedding -> Linear -> ReLU -> Linear"})
    encoder_prompt_dim: Optional[int] = field(
        default=None, metadata={"help": "hidden size of that MLP (default: 2 x encoder embed dim, as OFA)"})
    encoder_prompt_layers: str = field(
        default="all", metadata={"help": "encoder layers with prompts: all, bottom-K, top-K or indices like 0,2,5"})
    decoder_prompt: bool = field(default=False, metadata={"help": "add prefix prompts to decoder self-attention"})
    decoder_prompt_type: PROMPT_TYPES = field(default="prefix", metadata={"help": "prompt type (only 'prefix', as in OFA)"})
    decoder_prompt_length: int = field(default=100, metadata={"help": "decoder prompt tokens per layer (paper: 64)"})
    decoder_prompt_projection: bool = field(
        default=False, metadata={"help": "reparameterize decoder prompts: embedding -> Linear -> ReLU -> Linear"})
    decoder_prompt_dim: Optional[int] = field(
        default=None, metadata={"help": "hidden size of that MLP (default: 2 x encoder embed dim, as OFA)"})
    decoder_prompt_layers: str = field(
        default="all", metadata={"help": "decoder layers with prompts: all, bottom-K, top-K or indices like 0,2,5"})
    prompt_dropout: float = field(default=0.2, metadata={"help": "dropout on the prompt keys/values in training (OFA: 0.2)"})
    prompt_init: ChoiceEnum(PROMPT_INITS) = field(
        default="random", metadata={"help": "initialization of new prompts: random (OFA), vocab (projections of token "
                                            "embeddings), activations (the backbone's keys/values of real tokens)"})
    prompt_init_seed: int = field(default=1, metadata={"help": "seed of the tokens that vocab/activations start from"})
    # baselines of the paper
    tuning_method: ChoiceEnum(TUNING_METHODS) = field(
        default="auto", metadata={"help": "what is trained: auto (prompt if a prompt flag is set, else adapter if "
                                          "--adapter, else bitfit if --bitfit, else finetune), prompt, adapter, bitfit, finetune"})
    adapter: bool = field(default=False, metadata={"help": "bottleneck adapters after every FFN (freezes the backbone)"})
    adapter_dim: int = field(default=200, metadata={"help": "adapter hidden size"})
    bitfit: bool = field(default=False, metadata={"help": "train only the bias terms (BitFit)"})
    freeze_encoder_embedding: bool = field(default=False, metadata={"help": "freeze the encoder token embedding"})
    freeze_decoder_embedding: bool = field(default=False, metadata={"help": "freeze the decoder token embedding"})
    autocast: AUTOCAST = field(
        default="none", metadata={"help": "compute the forward pass in bfloat16 (torch.autocast, CPU or GPU) while parameters, "
                                          "gradients and optimizer state stay float32; fairseq's own --bf16 means TPU"})
    # prompt-only checkpoints
    backbone: Optional[str] = field(
        default=None, metadata={"help": "checkpoint holding the frozen backbone (default: --finetune-from-model or "
                                        "--restore-file); prompt-only checkpoints record its path and hash"})
    save_full_checkpoint: bool = field(
        default=False, metadata={"help": "write the whole model into checkpoints even when the backbone is frozen"})
    force_backbone: bool = field(
        default=False, metadata={"help": "load a prompt-only checkpoint onto a backbone whose hash differs from the recorded one"})


def config_from(args) -> OFAConfig:
    """An OFAConfig from a Namespace, DictConfig or OFAConfig (official checkpoints store a Namespace
    with many more entries; the unknown ones are ignored, the missing ones take the defaults)."""
    values = {}
    for f in dataclasses.fields(OFAConfig):
        if f.name.startswith("_"):
            continue
        value = getattr(args, f.name, None)
        if value is None:
            value = f.default if f.default is not dataclasses.MISSING else None
        values[f.name] = value
    cfg = OFAConfig(**values)
    for side in ("encoder", "decoder"):
        if getattr(cfg, f"{side}_prompt_dim") is None:  # OFA: 2 x encoder width, for both sides
            setattr(cfg, f"{side}_prompt_dim", 2 * cfg.encoder_embed_dim)
    validate(cfg)
    return cfg


def validate(cfg: OFAConfig):
    if not (cfg.encoder_normalize_before and cfg.decoder_normalize_before):
        raise ValueError("only pre-norm OFA is implemented: pass --encoder-normalize-before and "
                         "--decoder-normalize-before (every released OFA model uses them)")
    for side in ("encoder", "decoder"):
        prompted = getattr(cfg, f"{side}_prompt")
        if getattr(cfg, f"{side}_prompt_type") != "prefix":
            raise ValueError(f"--{side}-prompt-type={getattr(cfg, f'{side}_prompt_type')}: only 'prefix' is supported")
        if prompted and getattr(cfg, f"{side}_prompt_length") < 1:
            raise ValueError(f"--{side}-prompt-length must be at least 1, got {getattr(cfg, f'{side}_prompt_length')}")
        if not prompted:
            _reject_changed(cfg, [f"{side}_prompt_{n}" for n in ("length", "projection", "dim", "layers")],
                            f"--{side}-prompt")
    if not (cfg.encoder_prompt or cfg.decoder_prompt):
        _reject_changed(cfg, ["prompt_dropout", "prompt_init", "prompt_init_seed"],
                        "--encoder-prompt or --decoder-prompt")
    if cfg.tuning_method == "prompt" and not (cfg.encoder_prompt or cfg.decoder_prompt):
        raise ValueError("--tuning-method=prompt needs --encoder-prompt and/or --decoder-prompt")
    if cfg.tuning_method == "adapter" and not cfg.adapter:
        raise ValueError("--tuning-method=adapter needs --adapter")


def _reject_changed(cfg: OFAConfig, names, needs: str):
    """Options of a prompt that is off would be silently ignored: values other than the dataclass
    defaults are errors. A prompt dim equal to its filled-in default (2 x encoder width, which OFA's
    checkpoints store even without prompts) counts as unchanged."""
    def default(name):
        return 2 * cfg.encoder_embed_dim if name.endswith("_prompt_dim") else OFAConfig.__dataclass_fields__[name].default

    changed = [f"--{name.replace('_', '-')}={getattr(cfg, name)}" for name in names if getattr(cfg, name) != default(name)]
    if changed:
        raise ValueError(f"{', '.join(changed)} given without {needs}")


def pretrained_checkpoint(args) -> Optional[str]:
    """The file fairseq-train starts from (--finetune-from-model, or --restore-file unless it is the
    default checkpoint_last.pt); fairseq-train hands the model only its own config node, so look at
    the whole config it belongs to."""
    ckpt = args
    if isinstance(args, DictConfig):
        root = args._get_root()
        ckpt = root.get("checkpoint") if "checkpoint" in root else None
    restore = getattr(ckpt, "restore_file", None)
    return getattr(ckpt, "finetune_from_model", None) or (
        restore if restore and os.path.basename(restore) != "checkpoint_last.pt" else None)


def bf16_without_tpu(model_cfg):
    """fairseq's options turn --bf16 into --tpu (bf16 meant TPUs when they were written), and its Trainer
    then asks torch_xla for a device. Without torch_xla, train in bfloat16 on the CPU or GPU instead:
    fairseq's own bf16 path (model in bfloat16, FP16Optimizer with float32 master copies, no loss scaling).
    Must run before the Trainer is built, which reads common.tpu; `model_cfg` is fairseq-train's cfg.model."""
    root = model_cfg._get_root() if isinstance(model_cfg, DictConfig) else None
    common = root.get("common") if root is not None and "common" in root else None
    if common is None or not (common.bf16 and common.tpu) or importlib.util.find_spec("torch_xla") is not None:
        return
    with open_dict(common):
        common.tpu = False
    logger.info("--bf16 without torch_xla: training in bfloat16 on the %s, not on a TPU",
                "CPU" if common.cpu or not torch.cuda.is_available() else "GPU")


@register_model("ofa_prompt", dataclass=OFAConfig)
class OFAModel(FairseqEncoderDecoderModel):
    def __init__(self, cfg: OFAConfig, encoder, decoder):
        super().__init__(encoder, decoder)
        self.cfg = cfg
        self.tuning = resolve_tuning(cfg)
        apply_tuning(self, self.tuning, cfg)
        # True until prompts are loaded from a checkpoint: only fresh prompts get --prompt-init
        self.fresh_prompts = True

    @classmethod
    def build_model(cls, args, task):
        cfg = config_from(args)
        if cfg.backbone is None:
            cfg.backbone = pretrained_checkpoint(args)
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
        return cls(cfg, OFAEncoder(cfg, src_dict, enc_emb), OFADecoder(cfg, tgt_dict, dec_emb))

    def forward(self, src_tokens, src_lengths, prev_output_tokens, patch_images=None, patch_masks=None,
                features_only=False, alignment_layer=None, return_all_hiddens=False, **kwargs):
        with torch.autocast(src_tokens.device.type, torch.bfloat16, enabled=self.cfg.autocast == "bf16"):
            encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, patch_images=patch_images,
                                       patch_masks=patch_masks, return_all_hiddens=return_all_hiddens)
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

    def set_prompts(self, prompts, force_backbone: bool = False):
        """Swap in other prompts (a prompt file path or {"encoder": kv, "decoder": kv}) without reloading
        the backbone; see ofa_prompt.prompt_file."""
        from ..prompt_file import attach_prompts  # prompt_file builds on this module

        attach_prompts(self, prompts, force_backbone)

    def upgrade_state_dict_named(self, state_dict, name):
        upgrade_state_dict(self, state_dict, name)


@register_model("ofa", dataclass=OFAConfig)
class OFALegacyModel(OFAModel):
    """OFA's registry name, so that official checkpoints (`_name: ofa_*`) build this model."""


SIZES = {
    "tiny": dict(embed=256, layers=(4, 4), heads=4, resnet="resnet50"),
    "medium": dict(embed=512, layers=(4, 4), heads=8, resnet="resnet101"),
    "base": dict(embed=768, layers=(6, 6), heads=12, resnet="resnet101"),
    "large": dict(embed=1024, layers=(12, 12), heads=16, resnet="resnet152"),
    "huge": dict(embed=1280, layers=(24, 12), heads=16, resnet="resnet152"),
}

# What every released OFA checkpoint was trained with (OFA passes these as flags in its run scripts).
RELEASED_SWITCHES = dict(
    encoder_normalize_before=True, decoder_normalize_before=True, layernorm_embedding=True,
    patch_layernorm_embedding=True, code_layernorm_embedding=True, add_type_embedding=True, scale_attn=True,
    scale_fc=True, scale_heads=True, disable_entangle=True, share_decoder_input_output_embed=True,
    share_all_embeddings=True,
)


def _set_default(args, name, value):
    if getattr(args, name, None) is None:
        setattr(args, name, value)


def _size_preset(size):
    s = SIZES[size]

    def preset(args):
        for side, n_layers in zip(("encoder", "decoder"), s["layers"]):
            _set_default(args, f"{side}_embed_dim", s["embed"])
            _set_default(args, f"{side}_ffn_embed_dim", 4 * s["embed"])
            _set_default(args, f"{side}_layers", n_layers)
            _set_default(args, f"{side}_attention_heads", s["heads"])
        _set_default(args, "resnet_type", s["resnet"])

    return preset


for _size in SIZES:
    _preset = _size_preset(_size)
    register_model_architecture("ofa", f"ofa_{_size}")(_preset)

    def _prompt_arch(args, _preset=_preset):
        _preset(args)
        for name, value in RELEASED_SWITCHES.items():
            _set_default(args, name, value)

    register_model_architecture("ofa_prompt", f"ofa_prompt_{_size}")(_prompt_arch)
