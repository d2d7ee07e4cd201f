"""OFA's multi-head attention: scaled by (head_dim * scale_factor)^-1/2, with an additive position
bias, optional per-head output scales (`c_attn`), key/value prefixes (prompts), optionally gated, and an
incremental key/value cache for beam search.

Tensors are batch-first inside the model: query [B, T, C], keys [B, S, C].
"""
import functools
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor

Prefix = Tuple[Tensor, Tensor]  # keys, values: [B or 1, heads, P, head_dim]


class MaskedPrefix(NamedTuple):
    """A prefix whose rows differ in length (a batch mixing prompt files): padding_mask [B, P], True where
    a row's prefix is padding, so that the row attends exactly as it would to its own prompt alone."""
    key: Tensor
    value: Tensor
    padding_mask: Tensor


class GatedPrefix(NamedTuple):
    """A prefix attended to on its own and added with a per-head factor (LLaMA-Adapter's zero-init attention):
    out = softmax(q K_real) V_real + gate * softmax(q K_prefix) V_prefix, so a gate of 0 leaves the frozen
    model's outputs exactly as they are. gate: [B or 1, heads], the factor itself (already squashed)."""
    key: Tensor
    value: Tensor
    gate: Tensor


@with_incremental_state
class MultiheadAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, scale_factor: float = 2.0,
                 scale_heads: bool = False, cross: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed dim {embed_dim} is not divisible by {num_heads} attention heads")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = float(self.head_dim * scale_factor) ** -0.5
        self.dropout = dropout
        self.cross = cross
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if scale_heads else None
        for proj in (self.k_proj, self.v_proj, self.q_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2 ** -0.5)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        bias: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        prefix: Optional[Prefix] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        need_weights: bool = False,
        key_rows: Optional[Tuple[Tensor, Tensor]] = None,
    ):
        """query [B, T, C]; key [B, S, C] for cross-attention (None: self-attention).

        bias: float [B or 1, H, T, S] added to the logits of the S real keys (position bias, causal
        mask). key_padding_mask: bool [B, S], True = ignore. prefix: prompt keys/values put in front
        of the real ones; they get no bias and are masked only where a MaskedPrefix is padding; a GatedPrefix
        gets its own softmax, scaled by its gate. key_rows: which rows of `key` are copies of others
        (OFADecoder.distinct_rows), so that each distinct row is projected once. Returns (out [B, T, C], weights or
        None), weights being the head-averaged probabilities over the real keys [B, T, S].
        """
        bsz, tgt_len, _ = query.shape
        q = self._heads(self.q_proj(query))
        cache = self.get_incremental_state(incremental_state, "cache") if incremental_state is not None else None

        prefix_mask = getattr(prefix, "padding_mask", None)
        gate = getattr(prefix, "gate", None)
        if self.cross and cache:  # encoder keys/values do not change between decoding steps
            k, v = cache["key"], cache["value"]
        else:
            src = query if key is None else key
            k = project_rows(lambda x: self._heads(self.k_proj(x)), src, key_rows)
            v = project_rows(lambda x: self._heads(self.v_proj(x)), src, key_rows)
            if not self.cross and cache:  # the cache already starts with the prefix
                k = torch.cat([cache["key"], k], dim=2)
                v = torch.cat([cache["value"], v], dim=2)
                prefix_mask, gate = cache.get("prefix_padding_mask"), cache.get("prefix_gate")
            elif not self.cross and prefix is not None:
                k = torch.cat([prefix[0].expand(bsz, -1, -1, -1), k], dim=2)
                v = torch.cat([prefix[1].expand(bsz, -1, -1, -1), v], dim=2)
                gate = None if gate is None else gate.expand(bsz, -1)  # per row: beam search reorders the cache
            if incremental_state is not None:
                state = {"key": k, "value": v}
                if prefix_mask is not None:
                    state["prefix_padding_mask"] = prefix_mask
                if gate is not None:
                    state["prefix_gate"] = gate
                self.set_incremental_state(incremental_state, "cache", state)

        # bias and padding mask cover the real keys only; whatever is in front of them is prefix
        real_len = (bias.size(-1) if bias is not None else
                    key_padding_mask.size(1) if key_padding_mask is not None else
                    k.size(2) - (prefix_mask.size(1) if prefix_mask is not None else 0))
        n_prefix = k.size(2) - real_len
        if gate is None:
            mask = self._logit_mask(bias, key_padding_mask, n_prefix, real_len, q.dtype, prefix_mask)
            attn, probs = self._attend(q, k, v, mask, need_weights)
        else:  # two softmaxes: the prompt's share is added by its gate, not taken from the real keys
            mask = self._logit_mask(bias, key_padding_mask, 0, real_len, q.dtype)
            attn, probs = self._attend(q, k[:, :, n_prefix:], v[:, :, n_prefix:], mask, need_weights)
            prompt_mask = None if prefix_mask is None else _neg_inf_where(prefix_mask, q.dtype)
            prompt, _ = self._attend(q, k[:, :, :n_prefix], v[:, :, :n_prefix], prompt_mask, False)
            attn = attn + gate[:, :, None, None].to(attn.dtype) * prompt
            n_prefix = 0
        weights = None if probs is None else probs[..., n_prefix:].mean(dim=1)

        if self.c_attn is not None:
            attn = attn * self.c_attn[None, :, None, None]
        attn = attn.transpose(1, 2).reshape(bsz, tgt_len, self.embed_dim)
        return self.out_proj(attn), weights

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], need_weights: bool):
        """(softmax(q k^T * scaling + mask) v [B, H, T, hd], the probabilities [B, H, T, S] or None)."""
        if not need_weights:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling,
                                                  dropout_p=self.dropout if self.training else 0.0), None
        logits = torch.matmul(q * self.scaling, k.transpose(2, 3))
        if mask is not None:
            logits = logits + mask
        probs = F.softmax(logits.float(), dim=-1).type_as(logits)
        return torch.matmul(F.dropout(probs, self.dropout, self.training), v), probs

    @staticmethod
    def _logit_mask(bias, key_padding_mask, n_prefix: int, real_len: int, dtype, prefix_mask=None) -> Optional[Tensor]:
        """Additive [B|1, H|1, T|1, P+S] mask from the bias and the padding masks; on the prefix zeros,
        -inf where `prefix_mask` ([B, P]) marks padding. Written in one pass: at 480 px it is the largest
        tensor of an encoder layer ([B, H, 900+, 900+]), and building it piece by piece (sum, then pad) cost
        as much as the attention's own arithmetic on a CPU."""
        real = [t for t in (bias, None if key_padding_mask is None else _neg_inf_where(key_padding_mask, dtype))
                if t is not None]
        prefix = None if prefix_mask is None else _neg_inf_where(prefix_mask, dtype)
        if not n_prefix or (not real and prefix is None):
            return functools.reduce(_add, real, None)
        pieces = real + ([] if prefix is None else [prefix])
        lead = torch.broadcast_shapes(*(t.shape[:-1] for t in pieces))
        mask = torch.empty(*lead, n_prefix + real_len, device=pieces[0].device,
                           dtype=functools.reduce(torch.promote_types, (t.dtype for t in pieces)))
        mask[..., :n_prefix] = 0 if prefix is None else prefix
        keys = mask[..., n_prefix:]
        if not real:
            keys.zero_()
        elif len(real) == 2 and torch.broadcast_shapes(real[0].shape, real[1].shape) == keys.shape:
            torch.add(real[0], real[1], out=keys)
        else:  # one part, or two that broadcast to less than the whole (a padded prefix widens the batch)
            keys.copy_(real[0].expand_as(keys))
            for extra in real[1:]:
                keys.add_(extra)
        return mask

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        cache = self.get_incremental_state(incremental_state, "cache")
        if not cache:
            return incremental_state
        if self.cross and cache["key"].size(0) == new_order.numel():
            # Beam search reorders hypotheses within each sentence's beams, which share one encoder output:
            # the cross-attention cache only changes when finished sentences leave the batch (its size).
            return incremental_state
        cache = {name: t.index_select(0, new_order) for name, t in cache.items()}
        self.set_incremental_state(incremental_state, "cache", cache)
        return incremental_state


def _neg_inf_where(padding: Tensor, dtype) -> Tensor:
    """[B, S] bool -> [B, 1, 1, S] additive mask: -inf where True."""
    zeros = torch.zeros(padding.shape, dtype=dtype, device=padding.device)
    return zeros.masked_fill(padding, float("-inf"))[:, None, None, :]


def _add(mask: Optional[Tensor], extra: Optional[Tensor]) -> Optional[Tensor]:
    return extra if mask is None else mask + extra


def project_rows(project, x: Tensor, rows: Optional[Tuple[Tensor, Tensor]]) -> Tensor:
    """project(x) along x's first (batch) dimension, computed once per distinct row where `rows` says which
    rows are copies (distinct_rows)."""
    if rows is None:
        return project(x)
    first, inverse = rows
    return project(x.index_select(0, first)).index_select(0, inverse)
