import argparse
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fairseq.data import Dictionary

import ofa_prompt  # noqa: F401  (registers models, criteria, tasks)
from ofa_prompt.models.ofa import OFAModel

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("OFA_REFERENCE_DIR", REPO.parent / "shared" / "ofa_reference"))

MICRO = dict(
    arch="ofa_prompt_tiny", encoder_layers=2, decoder_layers=2, encoder_embed_dim=64, decoder_embed_dim=64,
    encoder_ffn_embed_dim=128, decoder_ffn_embed_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
    resnet_type="resnet18", dropout=0.0,
)


def micro_args(**overrides):
    from fairseq.models import ARCH_CONFIG_REGISTRY

    args = argparse.Namespace(**{**MICRO, **overrides})
    ARCH_CONFIG_REGISTRY[args.arch](args)
    return args


def micro_dictionary(size=300):
    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


def build_micro(dictionary=None, **overrides):
    d = dictionary or micro_dictionary()
    return OFAModel.build_model(micro_args(**overrides), SimpleNamespace(source_dictionary=d, target_dictionary=d))


def micro_batch(model, bsz=3, src_len=6, tgt_len=5, image=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(model.encoder.dictionary)
    src = torch.randint(4, n, (bsz, src_len), generator=g)
    src[:, 0] = 0
    src[-1, -2:] = 1  # right padding in the last sample
    prev = torch.randint(4, n, (bsz, tgt_len), generator=g)
    prev[:, 0] = 0
    return dict(
        src_tokens=src, src_lengths=src.ne(1).sum(1), prev_output_tokens=prev,
        patch_images=torch.rand(bsz, 3, image, image, generator=g) * 2 - 1,
        patch_masks=torch.tensor([True] * (bsz - 1) + [False]),
    )


@pytest.fixture(scope="session")
def reference():
    if not (REFERENCE / "README.md").is_file():
        pytest.skip(f"OFA reference fixtures not found at {REFERENCE} (set OFA_REFERENCE_DIR)")
    return REFERENCE
