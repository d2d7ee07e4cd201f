"""Checkpoint sizes, full model against prompt-only, for every official OFA size.

    python benchmarks/checkpoint_sizes.py [--prompt-length 64] [--measure FULL.pt PROMPT_ONLY.pt]

Sizes are computed from parameter counts (models built on the meta device, nothing allocated), in
fp32. Weights: the whole model against the prompts alone (an exported prompt file). Training checkpoints
(what fairseq-train writes, needed for exact resumption): OFA's holds every weight plus Adam's two
moments of the prompts; the prompt-only one holds the prompts and those moments. `--measure` adds the
on-disk sizes of two real files (e.g. from the demo run).
"""
import argparse
import os
from types import SimpleNamespace

import torch
from fairseq.data import Dictionary

from ofa_prompt.models.archs import SIZES
from ofa_prompt.models.ofa import OFAModel

OFA_VOCAB = 59457  # GPT-2 BPE dict + <mask> + 8192 codes + 1000 bins


def counts(size, prompt_length):
    from fairseq.models import ARCH_CONFIG_REGISTRY

    d = Dictionary()
    for i in range(OFA_VOCAB - len(d)):
        d.add_symbol(str(i))
    args = argparse.Namespace(arch=f"ofa_prompt_{size}", encoder_prompt=True, decoder_prompt=True,
                              encoder_prompt_length=prompt_length, decoder_prompt_length=prompt_length)
    ARCH_CONFIG_REGISTRY[args.arch](args)
    with torch.device("meta"):
        model = OFAModel.build_model(args, SimpleNamespace(source_dictionary=d, target_dictionary=d))
    total = sum(p.numel() for p in model.parameters())
    prompt = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, prompt


def mb(n_bytes):
    return f"{n_bytes / 2**20:,.1f} MB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt-length", type=int, default=64)
    ap.add_argument("--measure", nargs=2, metavar=("FULL", "PROMPT_ONLY"))
    a = ap.parse_args()
    print(f"| model | parameters | prompts (length {a.prompt_length}, enc+dec) | full weights | prompt weights | ratio "
          "| full training checkpoint | prompt-only training checkpoint | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in SIZES:
        total, prompt = counts(size, a.prompt_length)
        adam = 2 * 4 * prompt
        print(f"| ofa_{size} | {total / 1e6:,.1f} M | {prompt / 1e6:,.2f} M ({100 * prompt / total:.2f}%) "
              f"| {mb(4 * total)} | {mb(4 * prompt)} | {total / prompt:,.0f}x "
              f"| {mb(4 * total + adam)} | {mb(4 * prompt + adam)} "
              f"| {(4 * total + adam) / (4 * prompt + adam):,.0f}x |")
    if a.measure:
        full, small = (os.path.getsize(p) for p in a.measure)
        print(f"\nmeasured: {a.measure[0]} {mb(full)}, {a.measure[1]} {mb(small)}, ratio {full / small:,.1f}x")


if __name__ == "__main__":
    main()
