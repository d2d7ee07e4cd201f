"""The model's configuration: `OFAConfig`, the flat dataclass fairseq turns into command-line options
(OFA's flag names), and the typed per-stack view the model is built from (`StackConfig`, with its
`PromptConfig`), in the manner of fairseq's transformer_config.py. The flat names are read in exactly one
place, `OFAConfig.encoder_stack` / `decoder_stack`; everything below them takes the nested objects.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from ..tuning_methods import TUNING_METHODS
from .resnet import RESNET_BLOCKS
from .tuning import resolve_tuning

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
    disable_entangle: bool = field(
        default=False, metadata={"help": "do not add target positions to decoder embeddings"})
    entangle_position_embedding: bool = field(default=False, metadata={"help": "add absolute positions to embeddings"})
    share_decoder_input_output_embed: bool = field(
        default=False, metadata={"help": "tie decoder input/output embeddings"})
    share_all_embeddings: bool = field(default=False, metadata={"help": "share encoder/decoder embeddings"})
    freeze_resnet: bool = field(default=False, metadata={"help": "frozen BatchNorm in the ResNet (OFA's option)"})
    sync_bn: bool = field(default=False, metadata={"help": "synchronized BatchNorm (eps 1e-3) in the ResNet"})
    max_source_positions: int = field(default=1024, metadata={"help": "maximum source length"})
    max_target_positions: int = field(default=1024, metadata={"help": "maximum target length"})
    # prompt tuning
    encoder_prompt: bool = field(default=False, metadata={"help": "add prefix prompts to encoder self-attention"})
    encoder_prompt_type: PROMPT_TYPES = field(
        default="prefix", metadata={"help": "prompt type (only 'prefix', as in OFA)"})
    encoder_prompt_length: int = field(default=100, metadata={"help": "encoder prompt tokens per layer (paper: 64)"})
    encoder_prompt_projection: bool = field(
        default=False, metadata={"help": "reparameterize encoder prompts: embedding -> Linear -> ReLU -> Linear"})
    encoder_prompt_dim: Optional[int] = field(
        default=None, metadata={"help": "hidden size of that MLP or of --prompt-residual's (default: 2 x encoder embed "
                                        "dim, as OFA)"})
    encoder_prompt_layers: str = field(
        default="all", metadata={"help": "encoder layers with prompts: all, bottom-K, top-K or indices like 0,2,5"})
    decoder_prompt: bool = field(default=False, metadata={"help": "add prefix prompts to decoder self-attention"})
    decoder_prompt_type: PROMPT_TYPES = field(
        default="prefix", metadata={"help": "prompt type (only 'prefix', as in OFA)"})
    decoder_prompt_length: int = field(default=100, metadata={"help": "decoder prompt tokens per layer (paper: 64)"})
    decoder_prompt_projection: bool = field(
        default=False, metadata={"help": "reparameterize decoder prompts: embedding -> Linear -> ReLU -> Linear"})
    decoder_prompt_dim: Optional[int] = field(
        default=None, metadata={"help": "hidden size of that MLP or of --prompt-residual's (default: 2 x encoder embed "
                                        "dim, as OFA)"})
    decoder_prompt_layers: str = field(
        default="all", metadata={"help": "decoder layers with prompts: all, bottom-K, top-K or indices like 0,2,5"})
    prompt_gate: bool = field(
        default=False, metadata={"help": "a zero-initialized per-layer, per-head gate tanh(g) on the prompts' "
                                         "attention, normalized apart from the real keys' (LLaMA-Adapter): training "
                                         "starts from the frozen model's outputs exactly"})
    prompt_residual: bool = field(
        default=False, metadata={"help": "residual reparameterization of the prompts, E + MLP(E) (Razdaibiedina et al. "
                                         "2023), MLP hidden size --*-prompt-dim; folded to a flat prefix at export"})
    no_backbone_dropout: bool = field(
        default=False, metadata={"help": "set the frozen backbone's dropout, attention and activation dropout and "
                                         "drop-path to 0 while prompts (or adapters, BitFit) train (SuperPos-Prompt); "
                                         "the prompts' own --prompt-dropout stays"})
    prompt_dropout: float = field(
        default=0.2, metadata={"help": "dropout on the prompt keys/values in training (OFA: 0.2)"})
    prompt_init: str = field(
        default="random", metadata={"help": "initialization of new prompts: random (OFA), vocab (projections of token "
                                            "embeddings), activations (the backbone's keys/values of real tokens), or "
                                            "a prompt file (python -m ofa_prompt.prompt_file export) to start from: "
                                            "prompts tuned on another task or on the pretraining mix"})
    prompt_init_seed: int = field(default=1, metadata={"help": "seed of the tokens that vocab/activations start from"})
    # baselines of the paper
    tuning_method: ChoiceEnum(TUNING_METHODS) = field(
        default="auto", metadata={"help": "what is trained: auto (prompt if a prompt flag is set, else adapter if "
                                          "--adapter, else bitfit if --bitfit, else finetune), prompt, adapter, "
                                          "bitfit, finetune"})
    adapter: bool = field(
        default=False, metadata={"help": "bottleneck adapters after every FFN (freezes the backbone)"})
    adapter_dim: int = field(default=200, metadata={"help": "adapter hidden size"})
    bitfit: bool = field(default=False, metadata={"help": "train only the bias terms (BitFit)"})
    freeze_encoder_embedding: bool = field(default=False, metadata={"help": "freeze the encoder token embedding"})
    freeze_decoder_embedding: bool = field(default=False, metadata={"help": "freeze the decoder token embedding"})
    autocast: AUTOCAST = field(
        default="none", metadata={"help": "compute the forward pass in bfloat16 (torch.autocast, CPU or GPU) while "
                                          "parameters, gradients and optimizer state stay float32; fairseq's own "
                                          "--bf16 means TPU"})
    # prompt-only checkpoints
    backbone: Optional[str] = field(
        default=None, metadata={"help": "checkpoint holding the frozen backbone (default: --finetune-from-model or "
                                        "--restore-file); prompt-only checkpoints record its path and hash"})
    save_full_checkpoint: bool = field(
        default=False, metadata={"help": "write the whole model into checkpoints even when the backbone is frozen"})
    force_backbone: bool = field(
        default=False, metadata={"help": "load a prompt-only checkpoint onto a backbone whose hash differs from the "
                                         "recorded one"})

    @property
    def encoder_stack(self) -> "StackConfig":
        return StackConfig(
            name="encoder", embed_dim=self.encoder_embed_dim, ffn_embed_dim=self.encoder_ffn_embed_dim,
            layers=self.encoder_layers, attention_heads=self.encoder_attention_heads,
            drop_path_rate=self.encoder_drop_path_rate,
            prompt=PromptConfig(length=self.encoder_prompt_length, layers=self.encoder_prompt_layers,
                                projection=self.encoder_prompt_projection, dim=self.encoder_prompt_dim,
                                dropout=self.prompt_dropout, residual=self.prompt_residual, gate=self.prompt_gate)
            if self.encoder_prompt else None)

    @property
    def decoder_stack(self) -> "StackConfig":
        return StackConfig(
            name="decoder", embed_dim=self.decoder_embed_dim, ffn_embed_dim=self.decoder_ffn_embed_dim,
            layers=self.decoder_layers, attention_heads=self.decoder_attention_heads,
            drop_path_rate=self.decoder_drop_path_rate,
            prompt=PromptConfig(length=self.decoder_prompt_length, layers=self.decoder_prompt_layers,
                                projection=self.decoder_prompt_projection, dim=self.decoder_prompt_dim,
                                dropout=self.prompt_dropout, residual=self.prompt_residual, gate=self.prompt_gate)
            if self.decoder_prompt else None)


@dataclass(frozen=True)
class PromptConfig:
    """The prefix prompts of one stack (the paper's section 3): `length` key/value pairs in each layer of
    `layers`, optionally produced by an MLP of hidden size `dim` (`projection`, the reparameterization, or
    `residual`, E + MLP(E)), optionally added through a zero-initialized per-head `gate`."""
    length: int
    layers: str  # all, bottom-K, top-K or indices like 0,2,5 (parsed against the stack's depth)
    projection: bool
    dim: int
    dropout: float
    residual: bool = False
    gate: bool = False


@dataclass(frozen=True)
class StackConfig:
    """What differs between OFA's encoder and decoder stacks: sizes, stochastic depth and prompts."""
    name: str  # "encoder" or "decoder": for messages, and the option prefix of OFAConfig
    embed_dim: int
    ffn_embed_dim: int
    layers: int
    attention_heads: int
    drop_path_rate: float
    prompt: Optional[PromptConfig]


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
    # OFA: the prompt MLP's hidden size is 2 x the encoder width, for both stacks
    if cfg.encoder_prompt_dim is None:
        cfg.encoder_prompt_dim = 2 * cfg.encoder_embed_dim
    if cfg.decoder_prompt_dim is None:
        cfg.decoder_prompt_dim = 2 * cfg.encoder_embed_dim
    validate(cfg)
    return cfg


PROMPT_OPTIONS = ("type", "length", "projection", "dim", "layers")


def validate(cfg: OFAConfig):
    if not (cfg.encoder_normalize_before and cfg.decoder_normalize_before):
        raise ValueError("only pre-norm OFA is implemented: pass --encoder-normalize-before and "
                         "--decoder-normalize-before (every released OFA model uses them)")
    for side, prompted, prompt_type, length in (
            ("encoder", cfg.encoder_prompt, cfg.encoder_prompt_type, cfg.encoder_prompt_length),
            ("decoder", cfg.decoder_prompt, cfg.decoder_prompt_type, cfg.decoder_prompt_length)):
        if prompt_type != "prefix":
            raise ValueError(f"--{side}-prompt-type={prompt_type}: only 'prefix' is supported")
        if prompted and length < 1:
            raise ValueError(f"--{side}-prompt-length must be at least 1, got {length}")
        if not prompted:
            _reject_changed(cfg, [f"{side}_prompt_{n}" for n in PROMPT_OPTIONS[1:]], f"--{side}-prompt")
    if not (cfg.encoder_prompt or cfg.decoder_prompt):
        _reject_changed(cfg, ["prompt_dropout", "prompt_init", "prompt_init_seed", "prompt_gate", "prompt_residual"],
                        "--encoder-prompt or --decoder-prompt")
    projected = [f"--{side}-prompt-projection" for side in ("encoder", "decoder")
                 if getattr(cfg, f"{side}_prompt") and getattr(cfg, f"{side}_prompt_projection")]
    if cfg.prompt_residual and projected:
        raise ValueError(f"--prompt-residual and {' '.join(projected)} are two reparameterizations of one prompt: "
                         "choose one")
    if cfg.no_backbone_dropout and resolve_tuning(cfg) == "finetune":
        raise ValueError("--no-backbone-dropout turns dropout off in a frozen backbone; with finetuning nothing is "
                         "frozen: set --dropout/--attention-dropout/--*-drop-path-rate to 0 instead")
    if cfg.tuning_method == "prompt" and not (cfg.encoder_prompt or cfg.decoder_prompt):
        raise ValueError("--tuning-method=prompt needs --encoder-prompt and/or --decoder-prompt")
    if cfg.tuning_method == "adapter" and not cfg.adapter:
        raise ValueError("--tuning-method=adapter needs --adapter")


def _reject_changed(cfg: OFAConfig, names, needs: str):
    """Options of a prompt that is off would be silently ignored: values other than the dataclass
    defaults are errors (messages name the options, so they are looked up by their option names here). A
    prompt dim equal to its filled-in default (2 x encoder width, which OFA's checkpoints store even
    without prompts) counts as unchanged."""
    def default(name):
        return (2 * cfg.encoder_embed_dim if name.endswith("_prompt_dim")
                else OFAConfig.__dataclass_fields__[name].default)

    changed = [f"--{name.replace('_', '-')}={getattr(cfg, name)}"
               for name in names if getattr(cfg, name) != default(name)]
    if changed:
        raise ValueError(f"{', '.join(changed)} given without {needs}")
