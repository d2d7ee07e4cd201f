"""OFA's self-critical sequence training (`scst_reward_criterion`, captioning stage 2, with `--task caption
--scst`): for every image the task's SCST generator produces several captions (the finished hypotheses
of a beam, or samples); each is rewarded with its CIDEr-D against the image's references, less the
mean reward of the image's other captions; the loss is -(reward - baseline) * the caption's summed
log-probability, computed with the model in training mode. Whatever the tuning method (prompts, adapters,
BitFit, finetuning), only its parameters receive gradients: the freeze is enforced as in cross-entropy
training (TuningCriterion)."""
import logging
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.data import data_utils
from fairseq.dataclass import FairseqDataclass
from omegaconf import II
from torch import Tensor

from ..tasks.base import NONFINITE
from ..tasks.caption import note_cider_cache
from .label_smoothed_cross_entropy import TuningCriterion, parse_constraint_range

logger = logging.getLogger(__name__)


@dataclass
class ScstRewardCriterionConfig(FairseqDataclass):
    scst_cider_cached_tokens: Optional[str] = field(default=None, metadata={
        "help": "OFA's pickled CIDEr-D document frequencies of the training captions (coco-train-words.p): checked "
                "to exist but not read (a pickle can run code); the reward takes its document frequencies from "
                "the references of --data's training files instead, what that file holds for COCO"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "ignore the first N tokens of each caption"})
    sentence_avg: bool = II("optimization.sentence_avg")
    constraint_range: Optional[str] = field(
        default=None, metadata={"help": "'start,end': only special tokens 0-3 and this id range are allowed"})
    max_nonfinite_losses: int = field(default=5, metadata={
        "help": "a NaN/inf training loss skips its batch with a warning; this many in a row stop the run"})


def self_critical_advantages(rewards: Tensor) -> Tensor:
    """reward - baseline for the K captions of one image (last dimension): each caption's baseline is the
    mean reward of the image's K - 1 other captions."""
    k = rewards.size(-1)
    if k < 2:
        raise ValueError("self-critical training needs at least 2 captions per image")
    baseline = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return rewards - baseline


def scst_loss(token_lprobs: Tensor, mask: Tensor, advantages: Tensor) -> Tensor:
    """-sum over captions of advantage * (the caption's summed token log-probabilities).
    token_lprobs, mask: [N, T] (mask False on padding); advantages: [N]."""
    return -(advantages[:, None] * token_lprobs * mask).sum()


@register_criterion("scst_reward_criterion", dataclass=ScstRewardCriterionConfig)
class ScstRewardCriterion(TuningCriterion):
    self_critical = True  # CaptionTask.build_criterion: --scst trains with this criterion only

    def __init__(self, task, sentence_avg, scst_cider_cached_tokens=None, ignore_prefix_size=0,
                 constraint_range=None, max_nonfinite_losses=5):
        super().__init__(task, max_nonfinite_losses)
        if not getattr(getattr(task, "cfg", None), "scst", False) or not hasattr(task, "scst_rewards"):
            raise ValueError("--criterion scst_reward_criterion is OFA's captioning stage 2: it needs --task caption "
                             "--scst (with --scst-args for generating the rewarded captions)")
        if scst_cider_cached_tokens:
            note_cider_cache(scst_cider_cached_tokens, "--scst-cider-cached-tokens",
                             "the SCST reward takes CIDEr-D document frequencies from the references of the "
                             "training files in --data (what that file holds for COCO's training split)")
        self.sentence_avg = sentence_avg
        self.ignore_prefix_size = ignore_prefix_size
        self.constraint = parse_constraint_range(constraint_range)

    def forward(self, model, sample, update_num=0, reduce=True):
        captions = self.generate_captions(model, sample)
        texts = [[self.task.decode(c) for c in caps] for caps in captions]
        rewards = self.task.scst_rewards(texts, sample["refs"])
        net_output, target = self.forward_captions(model, sample, captions)
        token_lprobs, mask = self.caption_lprobs(model, net_output, target)
        advantages = torch.cat([self_critical_advantages(torch.tensor(r, dtype=torch.float64)) for r in rewards])
        loss = scst_loss(token_lprobs, mask, advantages.to(token_lprobs))
        skipped = False
        if model.training:
            loss, skipped = self.guard_nonfinite(model, loss, sample)
        ntokens, nsentences = int(mask.sum()), target.size(0)
        sample_size = nsentences if self.sentence_avg else ntokens
        logging_output = {"loss": loss.data, "score": float(sum(map(sum, rewards))), "ntokens": ntokens,
                          "nsentences": nsentences, "sample_size": sample_size}
        if model.training:  # OFATask.optimizer_step skips an update made only of non-finite batches
            logging_output[NONFINITE] = int(skipped)
        return loss, sample_size, logging_output

    def generate_captions(self, model, sample) -> List[List[Tensor]]:
        """Each image's captions (token ids ending in eos, on the CPU), generated in eval mode without
        gradients; the model is then put back in the mode it was in."""
        generator = self.task.scst_generator
        if generator is None:
            raise RuntimeError("the caption task built no SCST generator: its model was not built with --scst")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                hypos = self.task.generate(generator, [model], sample)
        finally:
            model.train(was_training)
        captions = [[h["tokens"].cpu() for h in per_image] for per_image in hypos]
        few = [len(c) for c in captions if len(c) < 2]
        if few:
            raise ValueError(f"the SCST generator gave {few[0]} caption(s) for an image; self-critical training "
                             "needs at least 2 (raise the beam in --scst-args)")
        return captions

    def forward_captions(self, model, sample, captions: List[List[Tensor]]):
        """The model's output for every caption, teacher-forced, each row beside its image and instruction
        (repeated once per caption); and the captions as targets [N, T]."""
        eos, pad = self.task.dictionary.eos(), self.padding_idx
        rows = [i for i, caps in enumerate(captions) for _ in caps]
        ios = [self.task.decoder_io(c[:-1] if len(c) and c[-1] == eos else c) for caps in captions for c in caps]
        device = sample["target"].device
        prev = data_utils.collate_tokens([p for p, _ in ios], pad).to(device)
        target = data_utils.collate_tokens([t for _, t in ios], pad).to(device)
        index = torch.tensor(rows, device=device)
        net_input = {k: v.index_select(0, index) if torch.is_tensor(v) else v
                     for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
        return model(**net_input, prev_output_tokens=prev), target

    def caption_lprobs(self, model, net_output, target):
        """Per-token log-probabilities of the captions [N, T] and the mask of their real tokens."""
        lprobs = self.constrained_lprobs(model, net_output)
        if self.ignore_prefix_size > 0:
            lprobs, target = lprobs[:, self.ignore_prefix_size:], target[:, self.ignore_prefix_size:]
        mask = target.ne(self.padding_idx)
        token_lprobs = lprobs.gather(-1, target[..., None]).squeeze(-1).masked_fill(~mask, 0.0)
        return token_lprobs, mask

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        TuningCriterion.log_loss_and_counts(total)
        nsentences = total("nsentences")
        # OFA's name: the mean CIDEr-D reward of the generated captions
        metrics.log_scalar("score", total("score") / max(nsentences, 1), nsentences, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
