"""Beam search in which every sample follows its own rule for the next token.

fairseq's BeamSearch, taking 2 x beam candidates per step as OFA's generator does, after each sample's rule
has masked the log-probabilities of its beams. VQA's beam search follows its decoder prefix and answer trie
this way (OFA masks the same tokens, then searches as usual; fairseq's PrefixConstrainedBeamSearch would keep
only beam candidates per step), and one batch can mix tasks (OFAPredictor.mixed): each sample's task supplies
its rule (OFATask.next_token_rule).
"""
from typing import Callable, Optional

from fairseq.search import BeamSearch
from torch import Tensor

Rule = Callable[[Tensor, Tensor], None]  # (tokens so far, from bos: [t], lprobs [1, V]) -> masks lprobs in place


def allow_only(lprobs: Tensor, allowed) -> None:
    """-inf, in place, on every token of lprobs [1, V] not in `allowed` (indices)."""
    keep = lprobs[:, allowed].clone()
    lprobs.fill_(-float("inf"))
    lprobs[:, allowed] = keep


class PerSampleBeamSearch(BeamSearch):
    def __init__(self, tgt_dict, rule_of: Callable[[int], Optional[Rule]]):
        """rule_of(sample id) -> that sample's rule (None: any token)."""
        super().__init__(tgt_dict)
        self.rule_of = rule_of
        # A sample whose rules allow fewer hypotheses than beams (a short answer list) can never finish all its
        # beams: end at the maximum length with the hypotheses found (as fairseq's constrained searches do).
        self.stop_on_max_len = True

    def step(self, step: int, lprobs, scores: Optional[Tensor], prev_output_tokens: Optional[Tensor] = None,
             original_batch_idxs: Optional[Tensor] = None, candidate_multiple: int = 2):
        bsz, beam, vocab = lprobs.size()
        rows = lprobs.view(bsz * beam, vocab)
        for i, sample_id in enumerate(original_batch_idxs.tolist()):
            rule = self.rule_of(sample_id)
            if rule is not None:
                for r in range(i * beam, (i + 1) * beam):
                    rule(prev_output_tokens[r], rows[r:r + 1])
        return super().step(step, lprobs, scores, prev_output_tokens, original_batch_idxs, candidate_multiple)


def use_per_sample_rules(generator, rule_of: Callable[[int], Optional[Rule]], what: str):
    """Give a fairseq SequenceGenerator's beam search per-sample rules; returns the generator. Only plain beam
    search can follow them: sampling, diverse beam search and the like are refused, naming `what` needs it."""
    if type(generator.search) is not BeamSearch:
        raise ValueError(f"{what} restricts each sample's next tokens, which plain beam search does: leave out "
                         f"--sampling, --diverse-beam-groups, --diversity-rate, --constraints and "
                         f"--match-source-len (the generator asked for uses {type(generator.search).__name__})")
    generator.search = PerSampleBeamSearch(generator.tgt_dict, rule_of)
    return generator
