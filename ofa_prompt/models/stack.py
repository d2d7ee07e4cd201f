"""Parts shared by OFA's encoder and decoder."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import StackConfig
from .layers import TransformerLayer, drop_path_rates
from .position import image_bucket_matrix, num_image_buckets, token_bucket_matrix
from .prompt import PromptEncoder, PromptMix, parse_prompt_layers


def embedding(num, dim, padding_idx=None, zero=False):
    emb = nn.Embedding(num, dim, padding_idx=padding_idx)
    nn.init.normal_(emb.weight, std=0.0 if zero else dim ** -0.5)
    if padding_idx is not None:
        nn.init.zeros_(emb.weight[padding_idx])
    return emb


class TransformerStack:
    """What encoder and decoder share (a mix-in for their fairseq base classes): token embedding,
    layers, absolute position tables with their LayerNorms, per-layer relative-position tables
    and the bucket index buffers. Attribute names are OFA's, so checkpoints load as they are."""

    def init_stack(self, cfg, stack: StackConfig, embed_tokens, max_positions: int):
        """The shared modules, sized by `stack` (cfg.encoder_stack or cfg.decoder_stack); the prompts are
        the stack's own attribute (OFA's name: encoder_prompt_encoder, decoder_prompt_encoder)."""
        dim, heads, num_layers = stack.embed_dim, stack.attention_heads, stack.layers
        self.register_buffer("version", torch.Tensor([3]))
        self.padding_idx = embed_tokens.padding_idx
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if cfg.no_scale_embedding else dim ** 0.5
        self.layernorm_embedding = nn.LayerNorm(dim) if cfg.layernorm_embedding else None
        self.dropout = nn.Dropout(cfg.dropout)
        rates = drop_path_rates(stack.drop_path_rate, num_layers)
        self.layers = nn.ModuleList(TransformerLayer(cfg, stack, decoder=stack.name == "decoder", drop_path=r)
                                    for r in rates)
        self.layer_norm = nn.LayerNorm(dim)
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

    prompt_attribute: str  # OFA's name of the stack's prompts, which checkpoints use: {side}_prompt_encoder

    @property
    def prompts(self) -> Optional[nn.Module]:
        """This stack's prompts (a PromptEncoder, a StaticPrompt, a PromptMix, or None)."""
        return getattr(self, self.prompt_attribute)

    def replace_prompts(self, module: Optional[nn.Module]):
        """Make `module` this stack's prompts (None: none); the model's set_prompts does it from tensors."""
        setattr(self, self.prompt_attribute, module)

    def prefixes(self, bsz: int, prompt_ids: Optional[Tensor] = None) -> dict:
        """{layer: prefix} of this call: one prompt set for every sample, or with a PromptMix each
        sample's own (`prompt_ids` [B], net_input's "prompt_ids"); none where the stack has no prompts."""
        prompts = self.prompts
        if prompts is None:  # no prompts on this side (in a mix: no file has any): nothing to choose among
            return {}
        if isinstance(prompts, PromptMix):
            if prompt_ids is None:
                raise ValueError("the model holds several prompt sets (a PromptMix): give each sample's in "
                                 "net_input['prompt_ids']")
            return prompts(prompt_ids)
        if prompt_ids is not None:
            raise ValueError("net_input['prompt_ids'] chooses among several prompt sets, but the model holds one "
                             "(attach_prompts(model, [file, ...]) loads several)")
        return prompts(bsz)

    def pos_bias(self, q_linear, k_linear, q_pos, k_pos, k: Optional[Tensor] = None):
        """(q_linear(q_pos) . k_linear(k_pos)) * scaling, per head: [B, H, Tq, Tk]; `k`: pos_keys(k_linear,
        k_pos) computed before."""
        q = q_linear(q_pos).unflatten(-1, (self.num_heads, -1)).transpose(1, 2) * self.pos_scaling
        k = self.pos_keys(k_linear, k_pos) if k is None else k
        return torch.matmul(q, k.transpose(2, 3))

    def pos_keys(self, k_linear, k_pos):
        """k_linear(k_pos) per head: [B, H, Tk, head_dim]."""
        return k_linear(k_pos).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def token_rel_bias(self, layer: int, q_idx: Tensor, k_idx: Tensor) -> Tensor:
        """[H, len(q_idx), len(k_idx)] relative bias between text positions."""
        buckets = self.token_rp_bucket[q_idx][:, k_idx]
        return F.embedding(buckets, self.token_rel_pos_table_list[layer].weight).permute(2, 0, 1)

    def sequence_buckets(self, image_ids: Optional[Tensor], text_pos: Tensor) -> Tensor:
        """[T, T] rows of sequence_rel_bias's table for the encoder's sequence (image patches with position ids
        `image_ids`, then the text positions): image pairs name image buckets, text pairs the token buckets after
        them, image-text pairs the zero row at the end (OFA gives them no relative bias). The same for every
        layer."""
        image_rows = self.image_rel_pos_table_list[0].num_embeddings
        text = self.token_rp_bucket[text_pos][:, text_pos] + image_rows
        if image_ids is None:
            return text
        n, total = len(image_ids), len(image_ids) + len(text_pos)
        zero_row = image_rows + self.token_rel_pos_table_list[0].num_embeddings
        buckets = torch.full((total, total), zero_row, dtype=text.dtype, device=text.device)
        buckets[:n, :n] = self.image_rp_bucket[image_ids][:, image_ids]
        buckets[n:, n:] = text
        return buckets

    def sequence_rel_bias(self, layer: int, buckets: Tensor) -> Tensor:
        """[H, T, T] relative bias of `layer` over the encoder's sequence (`buckets`: sequence_buckets), gathered in
        one pass into the heads-first layout. (Gathering [T, T, H] rows and permuting them made each later addition
        read across strides, and the image and text blocks were added one at a time: at 480 px each layer's bias
        is 900+ squared per head.)"""
        weights = [self.image_rel_pos_table_list[layer].weight, self.token_rel_pos_table_list[layer].weight]
        heads = weights[0].size(1)
        table = torch.cat(weights + [weights[0].new_zeros(1, heads)]).t()  # [H, rows]: small
        return table.index_select(1, buckets.flatten()).view(heads, *buckets.shape)


def build_prompt_encoder(stack: StackConfig) -> Optional[PromptEncoder]:
    """The prefix prompts of `stack` (None without prompts): where prompts enter attention is
    TransformerLayer.forward's `prefix`, which the stacks hand each layer from this module's output."""
    prompt = stack.prompt
    if prompt is None:
        return None
    layers = parse_prompt_layers(prompt.layers, stack.layers, f"{stack.name}-prompt-layers")
    return PromptEncoder(prompt.length, stack.embed_dim, stack.attention_heads, layers, prompt.projection,
                         prompt.dim, prompt.dropout, prompt.residual, prompt.gate)
