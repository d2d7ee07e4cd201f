"""`--no-repeat-ngram-size` that blocks: no n-gram appears twice in a hypothesis.

fairseq 0.12's SequenceGenerator hands its n-gram blocker the whole token buffer (every step's columns,
the unfilled ones padding), and the Python fallback of NGramRepeatBlock (used wherever its CUDA extension
is not built: every CPU, most pip installs) takes the last n-1 columns of that buffer as the hypothesis's
end. So it compares padding with padding and never blocks (fairseq issue #5206); OFA's own generator
blocks correctly. Generators built through an ofa_prompt task get the blocker below instead.
"""
import torch
from torch import nn


def block_repeated_ngrams(tokens: torch.Tensor, lprobs: torch.Tensor, n: int) -> torch.Tensor:
    """Sets to -inf, in place, the log-probability of every token that would complete an n-gram already in
    its row. tokens: [rows, length] generated so far (from the start token); lprobs: [rows, vocab]."""
    if n < 1:
        raise ValueError(f"--no-repeat-ngram-size={n}: an n-gram has at least 1 token")
    length = tokens.size(1)
    if length < n - 1 or (n == 1 and length == 0):
        return lprobs
    if n == 1:  # no token twice
        return lprobs.scatter_(1, tokens, -float("inf"))
    if length < n:
        return lprobs
    windows = tokens.unfold(1, n, 1)  # [rows, length - n + 1, n]: every n-gram so far
    end = tokens[:, length - n + 1:]  # the last n - 1 tokens: what a repeat would continue
    rows, starts = (windows[:, :, :-1] == end[:, None, :]).all(-1).nonzero(as_tuple=True)
    lprobs[rows, windows[rows, starts, -1]] = -float("inf")
    return lprobs


class RepeatedNgramBlocker(nn.Module):
    """A drop-in for fairseq's NGramRepeatBlock (same call), looking at the generated columns only."""

    def __init__(self, no_repeat_ngram_size: int):
        super().__init__()
        self.no_repeat_ngram_size = no_repeat_ngram_size

    def forward(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
        # at step s the generator has filled columns 0..s (the start token and s generated tokens)
        return block_repeated_ngrams(tokens[:, :step + 1], lprobs, self.no_repeat_ngram_size)


def use_working_ngram_blocker(generator):
    """Replace a fairseq generator's n-gram blocker (see the module's docstring); returns the generator."""
    blocker = getattr(generator, "repeat_ngram_blocker", None)
    if blocker is not None:
        generator.repeat_ngram_blocker = RepeatedNgramBlocker(blocker.no_repeat_ngram_size)
    return generator
