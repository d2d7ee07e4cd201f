"""OFA's decoder: text (and location-bin) tokens, positions as self- and cross-attention biases."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.models import FairseqIncrementalDecoder
from torch import Tensor

from .attention import project_rows
from .stack import TransformerStack, build_prompt_encoder


class OFADecoder(FairseqIncrementalDecoder, TransformerStack):
    prompt_attribute = "decoder_prompt_encoder"

    def __init__(self, cfg, dictionary, embed_tokens):
        super().__init__(dictionary)
        dim = cfg.decoder_embed_dim
        self.decoder_prompt_encoder = build_prompt_encoder(cfg.decoder_stack)  # first: OFA's parameter order
        self.init_stack(cfg, cfg.decoder_stack, embed_tokens, cfg.max_target_positions)
        self.self_pos_q_linear = nn.Linear(dim, dim)
        self.self_pos_k_linear = nn.Linear(dim, dim)
        self.cross_pos_q_linear = nn.Linear(dim, dim)
        self.cross_pos_k_linear = nn.Linear(dim, dim)
        # only used for image-code generation (OFA pretraining); kept so that checkpoints load strictly
        self.code_layernorm_embedding = nn.LayerNorm(dim) if cfg.code_layernorm_embedding else None
        self.entangle = cfg.entangle_position_embedding and not cfg.disable_entangle
        self.output_projection = nn.Linear(dim, len(dictionary), bias=False)
        if cfg.share_decoder_input_output_embed:
            self.output_projection.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, std=dim ** -0.5)
        self.max_target_positions = cfg.max_target_positions
        self.register_buffer("_causal", torch.empty(0), persistent=False)

    def causal_mask(self, n: int, like: Tensor) -> Tensor:
        if self._causal.size(0) < n or self._causal.dtype != like.dtype:
            self._causal = torch.full((n, n), float("-inf"), dtype=like.dtype, device=like.device).triu(1)
        return self._causal[:n, :n]

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        features_only: bool = False,
        alignment_layer: Optional[int] = None,
        return_all_hiddens: bool = False,
        **unused,
    ):
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state, alignment_layer)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None,
                         alignment_layer: Optional[int] = None, **unused):
        """Incremental decoding passes all tokens so far and computes the last position only."""
        bsz, tgt_len = prev_output_tokens.shape
        device = prev_output_tokens.device
        alignment_layer = len(self.layers) - 1 if alignment_layer is None else alignment_layer
        all_pos = torch.arange(tgt_len, device=device)
        q_pos = all_pos[-1:] if incremental_state is not None else all_pos
        tokens = prev_output_tokens[:, q_pos]

        tgt_pos_raw = self.embed_positions(all_pos)
        tgt_pos = self.pos_ln(tgt_pos_raw)[None]
        self_bias = self.pos_bias(self.self_pos_q_linear, self.self_pos_k_linear, tgt_pos[:, q_pos], tgt_pos)
        src_pos = encoder_out["position_embeddings"][0]
        # the first decoding step (no cross-attention keys kept yet) projects the encoder's rows: each distinct one
        # once (beam search copies them); later steps reuse what it kept
        first_step = incremental_state is not None and not encoder_out.get("cross_position_keys")
        rows = distinct_rows(encoder_out) if first_step else None
        cross_bias = self.pos_bias(self.cross_pos_q_linear, self.cross_pos_k_linear,
                                   tgt_pos[:, q_pos].expand(src_pos.size(0), -1, -1), src_pos,
                                   self.cross_position_keys(encoder_out, src_pos, incremental_state, rows))
        if incremental_state is None:
            self_bias = self_bias + self.causal_mask(tgt_len, self_bias)

        x = self.embed_tokens(tokens) * self.embed_scale
        if self.entangle:
            x = x + tgt_pos_raw[q_pos]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.dropout(x)

        padding_mask = prev_output_tokens.eq(self.padding_idx)
        padding_mask = padding_mask if bool(padding_mask.any()) else None
        enc = encoder_out["encoder_out"][0].transpose(0, 1)
        enc_mask = encoder_out["encoder_padding_mask"][0] if encoder_out["encoder_padding_mask"] else None
        prompts = self.decoder_prompt_encoder_output(bsz, incremental_state, encoder_out.get("prompt_ids"))

        attn, inner_states = None, [x]
        for idx, layer in enumerate(self.layers):
            bias = self_bias + self.token_rel_bias(idx, q_pos, all_pos)
            x, layer_attn = layer(x, bias, padding_mask, prefix=prompts.get(idx), encoder_out=enc,
                                  encoder_padding_mask=enc_mask, cross_bias=cross_bias, encoder_rows=rows,
                                  incremental_state=incremental_state, need_attn=idx == alignment_layer)
            inner_states.append(x)
            if layer_attn is not None:
                attn = layer_attn
        x = self.layer_norm(x)
        return x, {"attn": [attn], "inner_states": [s.transpose(0, 1) for s in inner_states]}

    def cross_position_keys(self, encoder_out, src_pos, incremental_state, rows=None) -> Optional[Tensor]:
        """The source positions' keys of the cross-attention position bias, which do not change while a
        generation decodes: computed at its first step and kept in its encoder output (which the encoder's
        reorder_encoder_out carries along with the beams); None outside incremental decoding."""
        if incremental_state is None:
            return None
        if not encoder_out.get("cross_position_keys"):
            encoder_out["cross_position_keys"] = [project_rows(lambda x: self.pos_keys(self.cross_pos_k_linear, x),
                                                               src_pos, rows)]
        return encoder_out["cross_position_keys"][0]

    def decoder_prompt_encoder_output(self, bsz, incremental_state, prompt_ids=None):
        """Prompt keys/values for this call (`prompt_ids`: the encoder's record of each sample's prompt set,
        reordered with the beams). During incremental decoding they are only needed on the first step: the
        self-attention caches keep them in front of the real keys."""
        if self.decoder_prompt_encoder is None:
            return {}
        if incremental_state is not None and self.layers[0].self_attn.get_incremental_state(incremental_state, "cache"):
            return {}
        return self.prefixes(bsz, prompt_ids[0] if prompt_ids else None)

    def output_layer(self, features):
        return self.output_projection(features)

    def max_positions(self):
        return self.max_target_positions


def distinct_rows(encoder_out) -> Optional[Tuple[Tensor, Tensor]]:
    """(a row of each distinct encoder row, the index of each row's among them) where the encoder output holds
    copies (beam search: reorder_encoder_out's "row_source"), else None."""
    source = encoder_out.get("row_source")
    if not source:
        return None
    distinct, inverse = torch.unique(source[0], return_inverse=True)
    if distinct.numel() == source[0].numel():
        return None
    order = torch.arange(inverse.numel(), device=inverse.device)
    first = torch.full_like(distinct, inverse.numel()).scatter_reduce(0, inverse, order, "amin")
    return first, inverse
