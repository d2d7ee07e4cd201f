"""OFA's unified encoder: ResNet patches + text tokens in one sequence, positions as attention biases."""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from fairseq.models import FairseqEncoder
from torch import Tensor

from .position import image_position_ids
from .resnet import RESNET_BLOCKS, ResNet
from .stack import TransformerStack, build_prompt_encoder, embedding


class OFAEncoder(FairseqEncoder, TransformerStack):
    prompt_attribute = "encoder_prompt_encoder"

    def __init__(self, cfg, dictionary, embed_tokens):
        super().__init__(dictionary)
        dim = cfg.encoder_embed_dim
        self.encoder_prompt_encoder = build_prompt_encoder(cfg.encoder_stack)  # first: OFA's parameter order
        self.init_stack(cfg, cfg.encoder_stack, embed_tokens, cfg.max_source_positions)
        self.type_embedding = embedding(2, dim) if cfg.add_type_embedding else None
        if cfg.resnet_type not in RESNET_BLOCKS:
            raise ValueError(f"--resnet-type={cfg.resnet_type}: choose one of {sorted(RESNET_BLOCKS)}")
        norm = "sync" if cfg.sync_bn else "frozen" if cfg.freeze_resnet else "batch"
        self.embed_images = ResNet(RESNET_BLOCKS[cfg.resnet_type], norm, cfg.resnet_drop_path_rate)
        self.image_proj = nn.Linear(ResNet.out_channels, dim)
        self.patch_layernorm_embedding = nn.LayerNorm(dim) if cfg.patch_layernorm_embedding else None
        self.pos_q_linear = nn.Linear(dim, dim)
        self.pos_k_linear = nn.Linear(dim, dim)
        self.image_bucket_size = cfg.image_bucket_size
        self.image_cache = None  # an ImageFeatureCache, attached by the task for --image-feature-cache
        self.max_source_positions = cfg.max_source_positions

    def embed_image(self, patch_images: Tensor, image_keys: Optional[Tensor] = None):
        """ResNet features projected to the model width: ([B, N, C] embeddings, [N] patch ids). With an
        image_cache (ofa_prompt.models.image_cache) and the images' keys, features seen before are looked up."""
        if self.image_cache is None:
            feats = self.embed_images(patch_images)
        else:
            if image_keys is None:
                raise ValueError("the image feature cache needs net_input['image_keys'] (the task's datasets give "
                                 "them with --image-feature-cache)")
            if self.embed_images.training or any(p.requires_grad for p in self.embed_images.parameters()):
                raise RuntimeError("--image-feature-cache: the ResNet is no longer frozen and in eval mode, so its "
                                   "features are not fixed; train without the cache")
            feats = self.image_cache.features(self.embed_images, patch_images, image_keys)
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
        prompt_ids: Optional[Tensor] = None,
        image_keys: Optional[Tensor] = None,
        **unused,
    ) -> Dict[str, List[Tensor]]:
        bsz, src_len = src_tokens.shape
        device = src_tokens.device
        x = self.embed_text(src_tokens, token_embeddings)
        padding_mask = src_tokens.eq(self.padding_idx)
        text_pos = torch.arange(src_len, device=device)
        # every row has the same positions: the position embeddings and biases are computed for one row (batch
        # dimension 1, broadcast in attention), not for each
        pos = self.pos_ln(self.embed_positions(text_pos))[None]
        n_img = 0
        if patch_images is not None:
            img, img_ids = self.embed_image(patch_images, image_keys)
            n_img = img.size(1)
            img_mask = torch.zeros(bsz, n_img, dtype=torch.bool, device=device)
            if patch_masks is not None:
                img_mask |= ~patch_masks.bool()[:, None]
            x = torch.cat([img, x], dim=1)
            padding_mask = torch.cat([img_mask, padding_mask], dim=1)
            img_pos = self.image_pos_ln(self.embed_image_positions(img_ids))[None]
            pos = torch.cat([img_pos, pos], dim=1)

        has_pads = bool(padding_mask.any())
        if has_pads:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))

        abs_bias = self.pos_bias(self.pos_q_linear, self.pos_k_linear, pos, pos)[0]  # [H, T, T]
        buckets = self.sequence_buckets(img_ids if n_img else None, text_pos)  # the same for every layer
        prompts = self.prefixes(bsz, prompt_ids)
        states = [x] if return_all_hiddens else []
        for idx, layer in enumerate(self.layers):
            bias = self.sequence_rel_bias(idx, buckets).add_(abs_bias)[None]  # a fresh tensor: added in place
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
            "position_embeddings": [pos.expand(bsz, -1, -1)],  # B x T x C, for the decoder's cross-attention bias
            "prompt_ids": [] if prompt_ids is None else [prompt_ids],  # B: the decoder's prompt sets too
        }

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        """The rows of `encoder_out` in `new_order`. Beam search copies each sentence's row once per beam, then
        reorders the rows at every step, within each sentence: "row_source" records which row of the encoder's
        own output each row is a copy of, and a reorder that leaves every row a copy of the same row moves nothing
        (the copies are equal). The decoder projects each distinct row once (OFADecoder.distinct_rows)."""
        rows = encoder_out["encoder_out"][0].size(1) if encoder_out.get("encoder_out") else new_order.numel()
        source = (encoder_out.get("row_source") or [torch.arange(rows, device=new_order.device)])[0]
        new_source = source.index_select(0, new_order)
        if new_source.shape == source.shape and torch.equal(new_source, source):
            return dict(encoder_out)

        def pick(key, dim):  # an entry may be absent (an encoder output built elsewhere): empty
            return [t.index_select(dim, new_order) for t in encoder_out.get(key, [])]

        return {
            "encoder_out": pick("encoder_out", 1),
            "encoder_padding_mask": pick("encoder_padding_mask", 0),
            "encoder_embedding": pick("encoder_embedding", 0),
            "encoder_states": pick("encoder_states", 1),
            "src_tokens": pick("src_tokens", 0),
            "src_lengths": pick("src_lengths", 0),
            "position_embeddings": pick("position_embeddings", 0),
            "prompt_ids": pick("prompt_ids", 0),
            # the decoder's cache of the cross-attention position keys (OFADecoder.cross_position_keys)
            "cross_position_keys": pick("cross_position_keys", 0),
            "row_source": [new_source],
        }

    def max_positions(self):
        return self.max_source_positions
