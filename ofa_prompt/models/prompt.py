"""Deep prefix prompts: trainable per-layer key/value prefixes for self-attention.

One table holds every prompted layer's keys and values (OFA's layout, so official prompt checkpoints
load): column ((2*i + s) * heads + h) * head_dim + d is slot s (0 key, 1 value) of the i-th prompted
layer, head h. With reparameterization the table is produced by an MLP from a smaller embedding.
"""
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from .attention import MaskedPrefix, Prefix


def parse_prompt_layers(spec: str, num_layers: int, option: str) -> List[int]:
    """Which layers get prompts: 'all', 'bottom-K', 'top-K' or a comma list of layer indices."""
    spec = str(spec).strip().lower()
    if spec == "all":
        return list(range(num_layers))
    kind, _, count = spec.partition("-")
    if kind in ("bottom", "top") and count.isdigit():
        k = int(count)
        if not 1 <= k <= num_layers:
            raise ValueError(f"--{option}={spec}: K must be between 1 and the {num_layers} layers")
        return list(range(k)) if kind == "bottom" else list(range(num_layers - k, num_layers))
    try:
        layers = sorted({int(tok) for tok in spec.split(",")})
    except ValueError:
        raise ValueError(f"--{option}={spec!r}: expected 'all', 'bottom-K', 'top-K' or layer indices like '0,2,5'")
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"--{option}={spec}: layer(s) {bad} do not exist (the stack has layers 0..{num_layers - 1})")
    return layers


class PromptEncoder(nn.Module):
    def __init__(self, length: int, embed_dim: int, num_heads: int, layers: Sequence[int],
                 projection: bool = False, prompt_dim: int = 0, dropout: float = 0.2):
        super().__init__()
        self.length, self.num_heads, self.head_dim = length, num_heads, embed_dim // num_heads
        self.layers = list(layers)
        width = len(self.layers) * 2 * embed_dim
        if projection:  # reparameterization: embedding -> Linear -> ReLU -> Linear
            self.embedding = nn.Embedding(length, embed_dim)
            self.trans = nn.Sequential(nn.Linear(embed_dim, prompt_dim), nn.ReLU(), nn.Linear(prompt_dim, width))
        else:
            self.embedding = nn.Embedding(length, width)
            self.trans = None
        self.dropout = nn.Dropout(dropout)

    def table(self) -> torch.Tensor:
        """[P, prompted_layers * 2 * embed_dim]: the reparameterized prompt table."""
        x = self.embedding.weight
        return x if self.trans is None else self.trans(x)

    def forward(self, batch_size: int = 1) -> Dict[int, Prefix]:
        """Per-layer (keys, values), each [B or 1, heads, P, head_dim]. The batch dimension is 1 in
        eval mode (prompts do not depend on the sample); in training each sample gets its own
        dropout mask, as in OFA."""
        x = self.table().view(1, self.length, len(self.layers), 2, self.num_heads, self.head_dim)
        if self.training and self.dropout.p > 0:
            x = self.dropout(x.expand(batch_size, -1, -1, -1, -1, -1))
        kv = x.permute(2, 3, 0, 4, 1, 5)  # [layers, 2, B, H, P, hd]
        return {layer: (kv[i, 0], kv[i, 1]) for i, layer in enumerate(self.layers)}


class StaticPrompt(nn.Module):
    """Fixed per-layer prefixes (an exported prompt file): the same interface as PromptEncoder, no training.
    Its tensors are the file's, not the model's: they stay out of its state dict (a backbone's checkpoint
    loads strictly with them attached)."""

    def __init__(self, kv: Dict[int, Prefix]):
        super().__init__()
        self.layers = sorted(kv)
        for layer in self.layers:
            self.register_buffer(f"key_{layer}", kv[layer][0].detach().reshape(1, *kv[layer][0].shape[-3:]),
                                 persistent=False)
            self.register_buffer(f"value_{layer}", kv[layer][1].detach().reshape(1, *kv[layer][1].shape[-3:]),
                                 persistent=False)
        first = kv[self.layers[0]][0]
        self.num_heads, self.length, self.head_dim = first.shape[-3:]

    def forward(self, batch_size: int = 1) -> Dict[int, Prefix]:
        return {layer: (getattr(self, f"key_{layer}"), getattr(self, f"value_{layer}")) for layer in self.layers}


class PromptMix(nn.Module):
    """Several prompt sets on one stack, chosen per sample (a batch that mixes prompt files).

    Entry j holds the folded prefixes of one prompt file ({layer: (key, value)}, [heads, P_j, head_dim];
    empty: no prompts on this side). Each layer's prefixes are padded to the longest entry and masked, so a
    sample attends exactly as it would to its own prompt alone."""

    def __init__(self, entries: Sequence[Dict[int, Prefix]]):
        super().__init__()
        self.layers = sorted({layer for kv in entries for layer in kv})
        self.size = len(entries)
        dtype = next(kv[layer][0].dtype for kv in entries for layer in kv)
        for layer in self.layers:
            shapes = [kv[layer][0].shape[-3:] for kv in entries if layer in kv]
            heads, head_dim = shapes[0][0], shapes[0][2]
            longest = max(shape[1] for shape in shapes)
            keys = torch.zeros(len(entries), heads, longest, head_dim, dtype=dtype)
            values, padding = torch.zeros_like(keys), torch.ones(len(entries), longest, dtype=torch.bool)
            for j, kv in enumerate(entries):
                if layer in kv:
                    key, value = (t.detach().reshape(heads, -1, head_dim) for t in kv[layer])
                    keys[j, :, :key.size(1)], values[j, :, :value.size(1)] = key, value
                    padding[j, :key.size(1)] = False
            self.register_buffer(f"key_{layer}", keys, persistent=False)
            self.register_buffer(f"value_{layer}", values, persistent=False)
            self.register_buffer(f"padding_{layer}", padding, persistent=False)

    def forward(self, prompt_ids: torch.Tensor) -> Dict[int, MaskedPrefix]:
        """Per-layer prefixes of each sample's entry: prompt_ids [B] (entry indices)."""
        if prompt_ids.numel() and not 0 <= int(prompt_ids.min()) <= int(prompt_ids.max()) < self.size:
            raise ValueError(f"prompt_ids must lie in 0..{self.size - 1}, the prompt sets loaded; got "
                             f"{sorted(set(prompt_ids.tolist()))}")
        return {layer: MaskedPrefix(getattr(self, f"key_{layer}")[prompt_ids],
                                    getattr(self, f"value_{layer}")[prompt_ids],
                                    getattr(self, f"padding_{layer}")[prompt_ids]) for layer in self.layers}


@torch.no_grad()
def fold(prompt: nn.Module) -> Dict[int, Prefix]:
    """The per-layer keys/values a prompt module produces in eval mode ([heads, P, head_dim] each): the
    reparameterization MLP, if any, is applied once and disappears."""
    was_training = prompt.training
    kv = prompt.eval()(batch_size=1)
    prompt.train(was_training)
    return {layer: (k[0].clone(), v[0].clone()) for layer, (k, v) in kv.items()}


def unfold(kv: Dict[int, Prefix], layers: Sequence[int]) -> torch.Tensor:
    """Per-layer keys/values ([heads, P, head_dim] each) back to OFA's table [P, layers * 2 * dim]."""
    table = torch.stack([torch.stack(kv[layer]) for layer in layers])  # [L, 2, H, P, hd]
    return table.permute(3, 0, 1, 2, 4).reshape(table.size(3), -1)
