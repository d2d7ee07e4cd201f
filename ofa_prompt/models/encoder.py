"""OFA's unified encoder: ResNet patches + text tokens in one sequence, positions as attention biases."""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models import FairseqEncoder
from torch import Tensor

from .layers import TransformerLayer, drop_path_rates
from .position import (image_bucket_matrix, image_position_ids, num_image_buckets, token_bucket_matrix)
from .prompt import PromptEncoder, parse_prompt_layers
from .resnet import RESNET_BLOCKS, ResNet


def embedding(num, dim, padding_idx=None, zero=False):
    emb = nn.Embedding(num, dim, padding_idx=padding_idx)
    nn.init.normal_(emb.weight, std=0.0 if zero else dim ** -0.5)
    if padding_idx is not None:
        nn.init.zeros_(emb.weight[padding_idx])
    return emb


class PositionBias(nn.Module):
    """Parts shared by encoder and decoder: absolute position tables with their LayerNorms,
    per-layer relative-position tables and the bucket index buffers."""

    def init_positions(self, cfg, dim, heads, num_layers, max_positions):
        self.num_heads = heads
        self.embed_positions = embedding(max_positions + 2, dim)
        self.embed_image_positions = embedding(cfg.image_bucket_size ** 2 + 1, dim)
        self.pos_ln = nn.LayerNorm(dim)
        self.image_pos_ln = nn.LayerNorm(dim)
        self.pos_scaling = float(dim / heads * cfg.attn_scale_factor) ** -0.5
        self.token_rel_pos_table_list = nn.ModuleList(
            embedding(2 * cfg.token_bucket_size - 1, heads, zero=True) for _ in range(num_layers))
        self.image_rel_pos_table_list = nn.ModuleList(
            embedding(num_image_buckets(cfg.image_bucket_size), heads, zero=True) for _ in range(num_layers))
        # Pure functions of the config: recomputed on load whether or not a checkpoint carries them.
        self.register_buffer("token_rp_bucket", token_bucket_matrix(cfg.token_bucket_size), persistent=False)
        self.register_buffer("image_rp_bucket", image_bucket_matrix(cfg.image_bucket_size), persistent=False)

    def pos_bias(self, q_linear, k_linear, q_pos, k_pos):
        """(q_linear(q_pos) . k_linear(k_pos)) * scaling, per head: [B, H, Tq, Tk]."""
        q = q_linear(q_pos).unflatten(-1, (self.num_heads, -1)).transpose(1, 2) * self.pos_scaling
        k = k_linear(k_pos).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        return torch.matmul(q, k.transpose(2, 3))

    def token_rel_bias(self, layer: int, q_idx: Tensor, k_idx: Tensor) -> Tensor:
        """[H, len(q_idx), len(k_idx)] relative bias between text positions."""
        buckets = self.token_rp_bucket[q_idx][:, k_idx]
        return F.embedding(buckets, self.token_rel_pos_table_list[layer].weight).permute(2, 0, 1)

    def image_rel_bias(self, layer: int, ids: Tensor) -> Tensor:
        """[H, N, N] relative bias between image patches with position ids `ids`."""
        buckets = self.image_rp_bucket[ids][:, ids]
        return F.embedding(buckets, self.image_rel_pos_table_list[layer].weight).permute(2, 0, 1)


def build_prompt_encoder(cfg, side: str, dim: int, heads: int, num_layers: int) -> Optional[PromptEncoder]:
    if not getattr(cfg, f"{side}_prompt"):
        return None
    length = getattr(cfg, f"{side}_prompt_length")
    if length < 1:
        raise ValueError(f"--{side}-prompt-length must be at least 1, got {length}")
    layers = parse_prompt_layers(getattr(cfg, f"{side}_prompt_layers"), num_layers, f"{side}-prompt-layers")
    return PromptEncoder(length, dim, heads, layers, getattr(cfg, f"{side}_prompt_projection"),
                         getattr(cfg, f"{side}_prompt_dim"), cfg.prompt_dropout)


class OFAEncoder(FairseqEncoder, PositionBias):
    def __init__(self, cfg, dictionary, embed_tokens):
        super().__init__(dictionary)
        dim, heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.register_buffer("version", torch.Tensor([3]))
        self.encoder_prompt_encoder = build_prompt_encoder(cfg, "encoder", dim, heads, cfg.encoder_layers)
        self.padding_idx = embed_tokens.padding_idx
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if cfg.no_scale_embedding else dim ** 0.5
        self.layernorm_embedding = nn.LayerNorm(dim) if cfg.layernorm_embedding else None
        self.type_embedding = embedding(2, dim) if cfg.add_type_embedding else None
        if cfg.resnet_type not in RESNET_BLOCKS:
            raise ValueError(f"--resnet-type={cfg.resnet_type}: choose one of {sorted(RESNET_BLOCKS)}")
        norm = "sync" if cfg.sync_bn else "frozen" if cfg.freeze_resnet else "batch"
        self.embed_images = ResNet(RESNET_BLOCKS[cfg.resnet_type], norm, cfg.resnet_drop_path_rate)
        self.image_proj = nn.Linear(ResNet.out_channels, dim)
        self.patch_layernorm_embedding = nn.LayerNorm(dim) if cfg.patch_layernorm_embedding else None
        self.init_positions(cfg, dim, heads, cfg.encoder_layers, cfg.max_source_positions)
        self.pos_q_linear = nn.Linear(dim, dim)
        self.pos_k_linear = nn.Linear(dim, dim)
        self.image_bucket_size = cfg.image_bucket_size
        self.dropout = nn.Dropout(cfg.dropout)
        rates = drop_path_rates(cfg.encoder_drop_path_rate, cfg.encoder_layers)
        self.layers = nn.ModuleList(TransformerLayer(cfg, decoder=False, drop_path=r) for r in rates)
        self.layer_norm = nn.LayerNorm(dim)
        self.max_source_positions = cfg.max_source_positions

    def embed_image(self, patch_images: Tensor):
        """ResNet features projected to the model width: ([B, N, C] embeddings, [N] patch ids)."""
        feats = self.embed_images(patch_images)
        h, w = feats.shape[-2:]
        x = self.image_proj(feats.flatten(2).transpose(1, 2)) * self.embed_scale
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[1]
        if self.patch_layernorm_embedding is not None:
            x = self.patch_layernorm_embedding(x)
        return self.dropout(x), image_position_ids(h, w, self.image_bucket_size, device=x.device)

    def embed_text(self, src_tokens: Tensor, token_embeddings: Optional[Tensor] = None):
        x = self.embed_tokens(src_tokens) if token_embeddings is None else token_embeddings
        x = x * self.embed_scale
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[0]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return self.dropout(x)

    def forward(
        self,
        src_tokens: Tensor,
        src_lengths: Optional[Tensor] = None,
        patch_images: Optional[Tensor] = None,
        patch_masks: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
        token_embeddings: Optional[Tensor] = None,
        **unused,
    ) -> Dict[str, List[Tensor]]:
        bsz, src_len = src_tokens.shape
        device = src_tokens.device
        x = self.embed_text(src_tokens, token_embeddings)
        padding_mask = src_tokens.eq(self.padding_idx)
        text_pos = torch.arange(src_len, device=device)
        pos = self.pos_ln(self.embed_positions(text_pos)).expand(bsz, -1, -1)
        n_img = 0
        if patch_images is not None:
            img, img_ids = self.embed_image(patch_images)
            n_img = img.size(1)
            img_mask = torch.zeros(bsz, n_img, dtype=torch.bool, device=device)
            if patch_masks is not None:
                img_mask |= ~patch_masks.bool()[:, None]
            x = torch.cat([img, x], dim=1)
            padding_mask = torch.cat([img_mask, padding_mask], dim=1)
            img_pos = self.image_pos_ln(self.embed_image_positions(img_ids)).expand(bsz, -1, -1)
            pos = torch.cat([img_pos, pos], dim=1)

        has_pads = bool(padding_mask.any())
        if has_pads:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))

        abs_bias = self.pos_bias(self.pos_q_linear, self.pos_k_linear, pos, pos)
        prompts = self.encoder_prompt_encoder(bsz) if self.encoder_prompt_encoder is not None else {}
        states = [x] if return_all_hiddens else []
        for idx, layer in enumerate(self.layers):
            bias = abs_bias.clone()
            bias[:, :, n_img:, n_img:] += self.token_rel_bias(idx, text_pos, text_pos)
            if n_img:
                bias[:, :, :n_img, :n_img] += self.image_rel_bias(idx, img_ids)
            x, _ = layer(x, bias, padding_mask if has_pads else None, prefix=prompts.get(idx))
            if return_all_hiddens:
                states.append(x)
        x = self.layer_norm(x)

        return {
            "encoder_out": [x.transpose(0, 1)],  # T x B x C, as fairseq expects
            "encoder_padding_mask": [padding_mask],  # B x T
            "encoder_embedding": [],
            "encoder_states": [s.transpose(0, 1) for s in states],
            "src_tokens": [],
            "src_lengths": [],
            "position_embeddings": [pos],  # B x T x C, consumed by the decoder's cross-attention bias
        }

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        def pick(key, dim):
            return [t.index_select(dim, new_order) for t in encoder_out[key]]

        return {
            "encoder_out": pick("encoder_out", 1),
            "encoder_padding_mask": pick("encoder_padding_mask", 0),
            "encoder_embedding": pick("encoder_embedding", 0),
            "encoder_states": pick("encoder_states", 1),
            "src_tokens": pick("src_tokens", 0),
            "src_lengths": pick("src_lengths", 0),
            "position_embeddings": pick("position_embeddings", 0),
        }

    def max_positions(self):
        return self.max_source_positions
