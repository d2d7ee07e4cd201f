"""Pre-norm transformer layers of OFA with the NormFormer-style extras (scale-attn, scale-fc,
scale-heads, scale-resids), stochastic depth and optional bottleneck adapters."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor

from .attention import MultiheadAttention, Prefix


def drop_path_rates(max_rate: float, n: int):
    """Stochastic depth growing linearly from 0 at the first layer to max_rate at the last."""
    return [max_rate * i / max(n - 1, 1) for i in range(n)]


class Adapter(nn.Module):
    """Bottleneck adapter x + up(relu(down(x))), applied to the FFN output (OFA's placement)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down_proj = nn.Linear(dim, hidden)
        self.up_proj = nn.Linear(hidden, dim)
        for proj in (self.down_proj, self.up_proj):  # near-identity start, as OFA's BERT-style init
            nn.init.normal_(proj.weight, std=0.02)
            nn.init.zeros_(proj.bias)

    def forward(self, x):
        return x + self.up_proj(F.relu(self.down_proj(x)))


def _norm(dim, enabled=True):
    return nn.LayerNorm(dim) if enabled else None


def _apply(norm, x):
    return x if norm is None else norm(x)


class TransformerLayer(nn.Module):
    """One encoder layer, or with `decoder=True` one decoder layer (self-attention, then cross-attention over
    the encoder's output).

    Parameter names are OFA's: encoder layers call the attention output norm `attn_ln`, decoder
    layers `self_attn_ln` / `cross_attn_ln`.
    """

    def __init__(self, cfg, stack, decoder: bool, drop_path: float = 0.0):
        super().__init__()
        dim, ffn, heads = stack.embed_dim, stack.ffn_embed_dim, stack.attention_heads
        self.decoder = decoder

        def attention(cross):
            return MultiheadAttention(dim, heads, cfg.attention_dropout, cfg.attn_scale_factor,
                                      cfg.scale_heads, cross=cross)

        self.self_attn = attention(cross=False)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        if decoder:
            self.self_attn_ln = _norm(dim, cfg.scale_attn)
            self.cross_attn_ln = _norm(dim, cfg.scale_attn)
            self.encoder_attn = attention(cross=True)
            self.encoder_attn_layer_norm = nn.LayerNorm(dim)
        else:
            self.attn_ln = _norm(dim, cfg.scale_attn)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)
        self.ffn_layernorm = _norm(ffn, cfg.scale_fc)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.w_resid = nn.Parameter(torch.ones(dim)) if cfg.scale_resids else None
        self.adapter = Adapter(dim, cfg.adapter_dim) if cfg.adapter else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)
        self.activation = {"gelu": lambda x: F.gelu(x), "relu": F.relu, "tanh": torch.tanh,
                           "gelu_fast": lambda x: F.gelu(x, approximate="tanh")}[cfg.activation_fn]
        self.drop_path = DropPath(drop_path)  # one draw per sample: x is batch-first
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def _residual(self, x, residual):
        return residual + self.drop_path(self.dropout(x))

    def forward(
        self,
        x: Tensor,
        self_bias: Tensor,
        padding_mask: Optional[Tensor] = None,
        prefix: Optional[Prefix] = None,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        cross_bias: Optional[Tensor] = None,
        encoder_rows=None,
        incremental_state=None,
        need_attn: bool = False,
    ):
        """x [B, T, C]; encoder_rows: which rows of encoder_out are copies (OFADecoder.distinct_rows).
        Returns (x, cross-attention weights or None)."""
        h, _ = self.self_attn(self.self_attn_layer_norm(x), bias=self_bias, key_padding_mask=padding_mask,
                              prefix=prefix, incremental_state=incremental_state)
        x = self._residual(_apply(self.self_attn_ln if self.decoder else self.attn_ln, h), x)

        weights = None
        if self.decoder:
            h, weights = self.encoder_attn(self.encoder_attn_layer_norm(x), key=encoder_out, bias=cross_bias,
                                           key_padding_mask=encoder_padding_mask, key_rows=encoder_rows,
                                           incremental_state=incremental_state, need_weights=need_attn)
            x = self._residual(_apply(self.cross_attn_ln, h), x)

        h = self.activation_dropout(self.activation(self.fc1(self.final_layer_norm(x))))
        h = self.dropout(self.fc2(_apply(self.ffn_layernorm, h)))
        if self.adapter is not None:
            h = self.adapter(h)
        residual = x if self.w_resid is None else x * self.w_resid
        return residual + self.drop_path(h), weights
