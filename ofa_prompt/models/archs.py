"""OFA's architectures, registered with fairseq for both model names:
* `ofa_prompt_tiny` .. `ofa_prompt_huge` (the plugin's): the sizes *and* the switches every released OFA
  model uses;
* `ofa_tiny` .. `ofa_huge` (OFA's own, so that OFA's run scripts keep their `--arch`): like OFA, the sizes
  only; the switches come from the checkpoint or the command line.
"""
from fairseq.models import register_model_architecture

from . import ofa  # noqa: F401  (the models must be registered before their architectures)

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
        encoder_layers, decoder_layers = s["layers"]
        _set_default(args, "encoder_embed_dim", s["embed"])
        _set_default(args, "encoder_ffn_embed_dim", 4 * s["embed"])
        _set_default(args, "encoder_layers", encoder_layers)
        _set_default(args, "encoder_attention_heads", s["heads"])
        _set_default(args, "decoder_embed_dim", s["embed"])
        _set_default(args, "decoder_ffn_embed_dim", 4 * s["embed"])
        _set_default(args, "decoder_layers", decoder_layers)
        _set_default(args, "decoder_attention_heads", s["heads"])
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
