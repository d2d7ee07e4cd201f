"""Prompt initializations beyond OFA's random one (the paper names slow convergence as prompt
tuning's main limitation).

* `random`: OFA's (standard normal table).
* `vocab`: every prompt position stands for a vocabulary token t; its key/value in layer l are that
  layer's own projections of t's embedding, k_proj(LN_l(e_t)) and v_proj(LN_l(e_t)). With
  reparameterization the MLP input embedding starts as e_t instead.
* `activations`: the keys/values the frozen model itself computes for a sequence of P real tokens in
  every layer (prefix-tuning's "real word activations"); needs a plain table (no reparameterization).
* a prompt file: its keys/values (of the same layers and length), e.g. prompts tuned on another task
  (SPoT's transfer) or on the pretraining mix with the backbone frozen; needs a plain table.

They run once, on the loaded backbone, when training starts (models.tuning.prepare_for_training, called
by the task), and only on prompts that did not come from a checkpoint.
"""
from typing import Dict, Optional

import torch

from .prompt import unfold

PROMPT_INITS = ["random", "vocab", "activations"]


def sample_tokens(dictionary, n: int, seed: int) -> torch.Tensor:
    """n ordinary vocabulary ids (no specials, no <mask>/<code_*>/<bin_*>), reproducibly."""
    first = dictionary.nspecial
    last = dictionary.index("<mask>") if "<mask>" in dictionary.indices else len(dictionary)
    if last - first < 1:
        raise ValueError("the dictionary has no ordinary tokens to initialize prompts from")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(first, last, (n,), generator=g)


def _kv_from_inputs(layers, inputs: Dict[int, torch.Tensor]):
    """{layer: (keys, values)} of each layer's self-attention for the given layer inputs [1, P, C]."""
    kv = {}
    for idx, x in inputs.items():
        attn = layers[idx].self_attn
        h = layers[idx].self_attn_layer_norm(x)
        kv[idx] = (attn._heads(attn.k_proj(h))[0], attn._heads(attn.v_proj(h))[0])
    return kv


def backbone_states(model, side: str, tokens: torch.Tensor):
    """Inputs [1, T, C] of every `side` layer for `tokens`, with all prompts switched off."""
    stacks = (model.encoder, model.decoder)
    prompts = [stack.prompts for stack in stacks]
    was_training = model.training
    model.eval()
    try:
        for stack in stacks:
            stack.replace_prompts(None)
        enc = model.encoder(tokens, src_lengths=torch.tensor([tokens.size(1)], device=tokens.device),
                            return_all_hiddens=True)
        states = enc["encoder_states"] if side == "encoder" else \
            model.decoder(tokens, encoder_out=enc, features_only=True)[1]["inner_states"]
    finally:
        for stack, module in zip(stacks, prompts):
            stack.replace_prompts(module)
        model.train(was_training)
    return [state.transpose(0, 1) for state in states]


def from_file(stack, side: str, kv: Dict[int, tuple], path: str) -> torch.Tensor:
    """The table of `stack`'s prompts holding the prompt file's keys/values (which must fit them exactly)."""
    prompt = stack.prompts
    if prompt.trans is not None:
        raise ValueError(f"--prompt-init={path}: a prompt file holds keys/values, with no reparameterization MLP to "
                         f"start --{side}-prompt-projection from; leave the projection out")
    if sorted(kv) != prompt.layers:
        raise ValueError(f"--prompt-init={path}: its {side} prompts are in layers {sorted(kv)}, this model's in "
                         f"{prompt.layers} (--{side}-prompt-layers)")
    shape = tuple(next(iter(kv.values()))[0].shape)
    want = (prompt.num_heads, prompt.length, prompt.head_dim)
    if shape != want:
        raise ValueError(f"--prompt-init={path}: its {side} prompts are [heads, length, head_dim] = {list(shape)}, "
                         f"this model's {list(want)} (--{side}-prompt-length, the width)")
    return unfold(kv, prompt.layers)


def _gate_from_file(prompt, side: str, kv: Dict[int, tuple], path: str):
    """A gated prompt file's factors start the model's gate (tanh(g) = factor); an ungated file leaves it at 0,
    the zero-init start; a gated file into an ungated model would lose its gates, so it is refused."""
    factors = [kv[layer][2] for layer in prompt.layers if len(kv[layer]) == 3]
    if not factors:
        return
    if prompt.gate is None:
        raise ValueError(f"--prompt-init={path}: its {side} prompts are gated (tuned with --prompt-gate); without "
                         "--prompt-gate their gates would be dropped")
    prompt.gate.copy_(torch.atanh(torch.stack(factors).clamp(-1 + 1e-6, 1 - 1e-6)))


@torch.no_grad()
def init_prompts(model, method: str, seed: int = 0, prompt_file: Optional[Dict[str, dict]] = None):
    """Initialize the model's new prompts by `method` (PROMPT_INITS), or from the keys/values `prompt_file`
    ({side: {layer: (key, value)}}, read from the prompt file named by `method`)."""
    if method == "random":
        return
    if method not in PROMPT_INITS and prompt_file is None:
        raise ValueError(f"--prompt-init={method}: choose one of {PROMPT_INITS}, or name a prompt file")
    for side, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        prompt = stack.prompts
        if prompt is None:
            continue
        if prompt_file is not None:
            if side not in prompt_file:
                raise ValueError(f"--prompt-init={method}: the file has no {side} prompts for --{side}-prompt")
            prompt.embedding.weight.copy_(from_file(stack, side, prompt_file[side], method))
            _gate_from_file(prompt, side, prompt_file[side], method)
            continue
        device = prompt.embedding.weight.device
        tokens = sample_tokens(stack.dictionary, prompt.length, seed).to(device)
        if prompt.trans is not None:
            if method == "activations":
                raise ValueError("--prompt-init=activations needs prompts without --*-prompt-projection")
            prompt.embedding.weight.copy_(stack.embed_tokens.weight[tokens])
            continue
        if method == "vocab":
            emb = stack.embed_tokens(tokens)[None] * stack.embed_scale
            inputs = {idx: emb for idx in prompt.layers}
        else:  # activations: what every layer of the backbone alone sees for this token sequence
            states = backbone_states(model, side, tokens[None])
            inputs = {idx: states[idx] for idx in prompt.layers}
        kv = _kv_from_inputs(stack.layers, inputs)
        prompt.embedding.weight.copy_(unfold(kv, prompt.layers))
