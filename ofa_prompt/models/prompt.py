"""Deep prefix prompts: trainable per-layer key/value prefixes for self-attention.

One table holds every prompted layer's keys and values (OFA's layout, so official prompt checkpoints
load): column ((2*i + s) * heads + h) * head_dim + d is slot s (0 key, 1 value) of the i-th prompted
layer, head h. With reparameterization the table is produced by an MLP from a smaller embedding; with
the residual one (Razdaibiedina et al. 2023) it is E + MLP(E), the MLP shared by every layer's keys and values.
With a gate (LLaMA-Adapter's zero-init attention) each prompted layer has a per-head factor tanh(g), g
starting at 0, by which its prompt's separately normalized attention is added (attention.GatedPrefix).
Folding (export) applies the MLPs and keeps the gate's factor: {layer: (key, value[, gate])}.
"""
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from .attention import GatedPrefix, MaskedPrefix, Prefix

# the prompts of a model as tensors: side ("encoder", "decoder") -> layer -> its folded prefix (key, value[, gate])
PromptSet = Dict[str, Dict[int, Prefix]]


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
                 projection: bool = False, prompt_dim: int = 0, dropout: float = 0.2, residual: bool = False,
                 gate: bool = False):
        super().__init__()
        if projection and residual:
            raise ValueError("a prompt has one reparameterization: the projection or the residual MLP, not both")
        self.length, self.num_heads, self.head_dim = length, num_heads, embed_dim // num_heads
        self.embed_dim = embed_dim
        self.layers = list(layers)
        width = len(self.layers) * 2 * embed_dim
        if projection:  # reparameterization: embedding -> Linear -> ReLU -> Linear
            self.embedding = nn.Embedding(length, embed_dim)
            self.trans = nn.Sequential(nn.Linear(embed_dim, prompt_dim), nn.ReLU(), nn.Linear(prompt_dim, width))
        else:
            self.embedding = nn.Embedding(length, width)
            self.trans = None
        # residual reparameterization: one MLP over every layer's key and value vectors, added to them
        self.residual = nn.Sequential(nn.Linear(embed_dim, prompt_dim), nn.ReLU(),
                                      nn.Linear(prompt_dim, embed_dim)) if residual else None
        self.gate = nn.Parameter(torch.zeros(len(self.layers), num_heads)) if gate else None
        self.dropout = nn.Dropout(dropout)

    def table(self) -> torch.Tensor:
        """[P, prompted_layers * 2 * embed_dim]: the reparameterized prompt table."""
        x = self.embedding.weight
        if self.trans is not None:
            return self.trans(x)
        if self.residual is not None:
            chunks = x.view(self.length, -1, self.embed_dim)
            return (chunks + self.residual(chunks)).view(self.length, -1)
        return x

    def forward(self, batch_size: int = 1) -> Dict[int, Prefix]:
        """Per-layer (keys, values), each [B or 1, heads, P, head_dim], with the gate a GatedPrefix. The batch
        dimension is 1 in eval mode (prompts do not depend on the sample); in training each sample gets its own
        dropout mask, as in OFA."""
        x = self.table().view(1, self.length, len(self.layers), 2, self.num_heads, self.head_dim)
        if self.training and self.dropout.p > 0:
            x = self.dropout(x.expand(batch_size, -1, -1, -1, -1, -1))
        kv = x.permute(2, 3, 0, 4, 1, 5)  # [layers, 2, B, H, P, hd]
        if self.gate is None:
            return {layer: (kv[i, 0], kv[i, 1]) for i, layer in enumerate(self.layers)}
        factor = torch.tanh(self.gate)  # LLaMA-Adapter's squashing: the factor stays within (-1, 1)
        return {layer: GatedPrefix(kv[i, 0], kv[i, 1], factor[i][None]) for i, layer in enumerate(self.layers)}


class StaticPrompt(nn.Module):
    """Fixed per-layer prefixes (an exported prompt file): the same interface as PromptEncoder, no training.
    Its tensors are the file's, not the model's: they stay out of its state dict (a backbone's checkpoint
    loads strictly with them attached)."""

    def __init__(self, kv: Dict[int, tuple]):
        super().__init__()
        self.layers = sorted(kv)
        gated = {len(kv[layer]) == 3 for layer in self.layers}
        if len(gated) > 1:
            raise ValueError("a prompt set has a gate in some layers and none in others: gate all or none")
        self.gated = gated.pop()
        for layer in self.layers:
            key, value = kv[layer][:2]
            self.register_buffer(f"key_{layer}", key.detach().reshape(1, *key.shape[-3:]), persistent=False)
            self.register_buffer(f"value_{layer}", value.detach().reshape(1, *value.shape[-3:]), persistent=False)
            if self.gated:
                self.register_buffer(f"gate_{layer}", kv[layer][2].detach().reshape(1, -1), persistent=False)
        first = kv[self.layers[0]][0]
        self.num_heads, self.length, self.head_dim = first.shape[-3:]

    def forward(self, batch_size: int = 1) -> Dict[int, Prefix]:
        def prefix(layer):
            kv = (getattr(self, f"key_{layer}"), getattr(self, f"value_{layer}"))
            return GatedPrefix(*kv, getattr(self, f"gate_{layer}")) if self.gated else kv

        return {layer: prefix(layer) for layer in self.layers}


class PromptMix(nn.Module):
    """Several prompt sets on one stack, chosen per sample (a batch that mixes prompt files).

    Entry j holds the folded prefixes of one prompt file ({layer: (key, value)}, [heads, P_j, head_dim];
    empty: no prompts on this side). Each layer's prefixes are padded to the longest entry and masked, so a
    sample attends exactly as it would to its own prompt alone."""

    def __init__(self, entries: Sequence[Dict[int, Prefix]]):
        super().__init__()
        if any(len(prefix) == 3 for kv in entries for prefix in kv.values()):
            # a row whose file lacks a layer would have nothing to normalize its gated prompt's attention over
            raise ValueError("gated prompts (--prompt-gate) cannot be mixed in one batch; attach one prompt file "
                             "at a time")
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
def fold(prompt: nn.Module) -> Dict[int, tuple]:
    """The per-layer keys/values a prompt module produces in eval mode ([heads, P, head_dim] each), and a
    gated prompt's per-head factors ([heads]): the reparameterization MLP, if any, is applied once and
    disappears."""
    was_training = prompt.training
    kv = prompt.eval()(batch_size=1)
    prompt.train(was_training)
    return {layer: tuple(t[0].clone() for t in prefix) for layer, prefix in kv.items()}


def unfold(kv: Dict[int, Prefix], layers: Sequence[int]) -> torch.Tensor:
    """Per-layer keys/values ([heads, P, head_dim] each) back to OFA's table [P, layers * 2 * dim] (a gate, which
    the table has no place for, is left out)."""
    table = torch.stack([torch.stack(kv[layer][:2]) for layer in layers])  # [L, 2, H, P, hd]
    return table.permute(3, 0, 1, 2, 4).reshape(table.size(3), -1)
