"""Generation that OFA's tasks constrain: options given as JSON (--eval-args, --scst-args), generation restricted
to a set of tokens, and all-candidate inference (scoring every candidate answer, OFA's allcand) with its
answers in fairseq-generate's hypothesis format."""
import json
import math
from typing import List

import torch
from fairseq.sequence_generator import EnsembleModel


class AllowedTokens(EnsembleModel):
    """An ensemble whose next-token distribution is restricted to a fixed set of tokens."""

    def __init__(self, models, allowed: torch.Tensor):
        super().__init__(models)
        self.register_buffer("blocked", ~allowed)

    def forward_decoder(self, *args, **kwargs):
        lprobs, attn = super().forward_decoder(*args, **kwargs)
        return lprobs.masked_fill(self.blocked.to(lprobs.device), -float("inf")), attn


def generation_options(option: str, text: str) -> dict:
    """The generator options a JSON option holds (--eval-args, --scst-args)."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{option}={text!r} is not JSON: {e}")
    if not isinstance(options, dict):
        raise ValueError(f"{option}={text!r}: expected a JSON object like '{{\"beam\": 5}}'")
    return options


def score_candidates(model, sample, candidates: List[torch.Tensor], task, prefixes=None, chunk: int = 64):
    """OFA's all-candidate inference: the log-likelihood of every candidate answer for every sample
    (teacher-forced, one encoder pass). Returns [B, C] summed log-probabilities."""
    net = sample["net_input"]
    enc = model.encoder(net["src_tokens"], net["src_lengths"], patch_images=net["patch_images"],
                        patch_masks=net["patch_masks"], token_embeddings=net.get("token_embeddings"))
    bsz, pad = net["src_tokens"].size(0), task.dictionary.pad()
    out = torch.full((bsz, len(candidates)), -math.inf)
    pairs = [(b, c) for b in range(bsz) for c in range(len(candidates))]
    for start in range(0, len(pairs), chunk):
        part = pairs[start:start + chunk]
        ios = [task.decoder_io(candidates[c], None if prefixes is None else prefixes[b]) for b, c in part]
        prev = torch.nn.utils.rnn.pad_sequence([p for p, _ in ios], batch_first=True, padding_value=pad)
        target = torch.nn.utils.rnn.pad_sequence([t for _, t in ios], batch_first=True, padding_value=pad)
        rows = torch.tensor([b for b, _ in part], device=prev.device)
        logits, _ = model.decoder(prev.to(rows.device), encoder_out=model.encoder.reorder_encoder_out(enc, rows))
        lprobs = torch.log_softmax(logits.float(), -1)
        mask = target.ne(pad)
        picked = lprobs.gather(-1, target.clamp(min=0)[..., None]).squeeze(-1) * mask
        for (b, c), s in zip(part, picked.sum(1).tolist()):
            out[b, c] = s
    return out


def as_hypotheses(best: torch.Tensor, scores: torch.Tensor, candidates: List[torch.Tensor], eos: int):
    """fairseq-generate's hypothesis format for a chosen candidate per sample."""
    hypos = []
    for b, c in enumerate(best.tolist()):
        tokens = torch.cat([candidates[c], torch.tensor([eos])])
        hypos.append([{"tokens": tokens, "score": scores[b, c], "alignment": None,
                       "positional_scores": torch.full((len(tokens),), float(scores[b, c]) / len(tokens))}])
    return hypos
