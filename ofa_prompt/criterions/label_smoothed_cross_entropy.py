"""OFA's label-smoothed cross-entropy (`adjust_label_smoothed_cross_entropy`, and OFA's misspelling), with
its drop-worst, R-Drop and constraint options, skipping batches whose loss is not finite."""
import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from ..tasks.base import NONFINITE

logger = logging.getLogger(__name__)


@dataclass
class LabelSmoothedCrossEntropyConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing epsilon (0 = none)"})
    report_accuracy: bool = field(default=False, metadata={"help": "log token accuracy"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "ignore the first N target tokens"})
    ignore_eos: bool = field(default=False, metadata={"help": "ignore the eos target token"})
    sentence_avg: bool = II("optimization.sentence_avg")
    drop_worst_ratio: float = field(default=0.0, metadata={"help": "drop this fraction of the worst tokens"})
    drop_worst_after: int = field(default=0, metadata={"help": "start dropping the worst tokens after N updates"})
    use_rdrop: bool = field(default=False, metadata={"help": "R-Drop: run the batch twice, add a symmetric KL"})
    reg_alpha: float = field(default=1.0, metadata={"help": "weight of the R-Drop KL term"})
    constraint_range: Optional[str] = field(
        default=None, metadata={"help": "'start,end': only special tokens 0-3 and this id range are allowed"})
    max_nonfinite_losses: int = field(
        default=5, metadata={"help": "a NaN/inf training loss skips its batch with a warning; this many in a row "
                                     "stop the run"})
    sample_patch_num: Optional[int] = field(default=None, metadata={
        "help": "refused: OFA samples image patches only in its pretraining task (unify_task, the image-text half "
                "of each batch); its fine-tuning ignores the option. Leave it out; lower --patch-image-size for "
                "fewer image positions"})


def refuse_sample_patch_num(value):
    """OFA's criterion keeps a random subset of patches only for the list samples of its pretraining task
    (unify_task); every task here yields the plain samples that OFA's fine-tuning never subsamples, so
    honouring the option would change training where OFA does not."""
    if value is not None:
        raise ValueError(
            f"--sample-patch-num={value}: OFA applies it only to its pretraining task's (unify_task) image-text "
            "samples, which this plugin does not implement; OFA's fine-tuning ignores it. Remove the option "
            "(lower --patch-image-size to give the encoder fewer image positions)")


def parse_constraint_range(text: Optional[str]):
    """OFA's --constraint-range 'start,end' as (start, end), or None."""
    if not text:
        return None
    try:
        start, end = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--constraint-range={text!r}: expected 'start,end'")
    return start, end


def label_smoothed_nll_loss(lprobs, target, epsilon, allowed=None):
    """Per-token (loss, nll). Smoothing mass is spread over the allowed tokens only:
    `allowed` is a bool [N, V] mask, a list of ids, or None for the whole vocabulary."""
    nll = -lprobs.gather(-1, target[:, None]).squeeze(-1)
    if allowed is None:
        smooth, n = -lprobs.sum(-1), lprobs.size(-1)
    elif torch.is_tensor(allowed) and allowed.dtype == torch.bool:
        smooth, n = -lprobs.masked_fill(~allowed, 0).sum(-1), allowed.sum(-1) + 1e-6
    else:
        smooth, n = -lprobs[:, allowed].sum(-1), len(allowed) + 1e-6
    eps_i = epsilon / (n - 1)
    return (1.0 - epsilon - eps_i) * nll + eps_i * smooth, nll


def symmetric_kl(p, q):
    return (F.kl_div(p, q.exp(), reduction="sum") + F.kl_div(q, p.exp(), reduction="sum")) / 2


def _repeat_twice(x):
    if isinstance(x, dict):
        return {k: _repeat_twice(v) for k, v in x.items()}
    if torch.is_tensor(x):
        return x.repeat(2, *([1] * (x.dim() - 1)))
    if isinstance(x, int):
        return 2 * x
    return x


class TuningCriterion(FairseqCriterion):
    """What every training criterion of the plugin does besides its loss: skip batches whose loss is
    NaN/inf (the freeze and prompt initialization happen when training starts: models.tuning)."""

    def __init__(self, task, max_nonfinite_losses=5):
        super().__init__(task)
        self.max_nonfinite, self._nonfinite_run = max_nonfinite_losses, 0

    def constrained_lprobs(self, model, net_output, masks=None):
        """The model's log-probabilities with disallowed tokens at -inf: outside `masks` (OFA's constraint
        masks, [B, T, V] bool) and outside --constraint-range (special tokens 0-3 always allowed)."""
        logits = net_output[0]
        if masks is not None:
            logits = logits.masked_fill(~masks, -math.inf)
        if self.constraint is not None:
            start, end = self.constraint
            logits = logits.clone()
            logits[:, :, 4:start] = -math.inf
            logits[:, :, end:] = -math.inf
        return model.get_normalized_probs((logits,) + tuple(net_output[1:]), log_probs=True)

    @staticmethod
    def log_loss_and_counts(total):
        """Logs the loss per sample-size unit and the batch counts; `total(key)` sums a logging-output key.
        Returns (sample_size, ntokens)."""
        sample_size, ntokens = total("sample_size"), total("ntokens")
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1), sample_size, round=3)
        metrics.log_scalar("ntokens", ntokens, 1, round=3)
        metrics.log_scalar("nsentences", total("nsentences"), 1, round=3)
        metrics.log_scalar("sample_size", sample_size, 1, round=3)
        return sample_size, ntokens

    def guard_nonfinite(self, model, loss, sample):
        """(loss, skipped): a batch whose loss is NaN/inf gets a zero loss with zero gradients (its update is
        then skipped by the task); too many in a row stop the run."""
        if torch.isfinite(loss):
            self._nonfinite_run = 0
            return loss, False
        self._nonfinite_run += 1
        ids = sample["id"].tolist()[:8] if "id" in sample else "?"
        if self._nonfinite_run >= self.max_nonfinite:
            raise FloatingPointError(
                f"the training loss was NaN/inf in {self._nonfinite_run} consecutive batches (last sample ids {ids}); "
                "lower --lr, check the data, or raise --max-nonfinite-losses")
        logger.warning("non-finite loss (%s) on sample ids %s: batch skipped (%d in a row)", loss.item(), ids,
                       self._nonfinite_run)
        return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0, True


@register_criterion("adjust_label_smoothed_cross_entropy", dataclass=LabelSmoothedCrossEntropyConfig)
class AdjustLabelSmoothedCrossEntropy(TuningCriterion):
    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, ignore_eos=False,
                 report_accuracy=False, drop_worst_ratio=0.0, drop_worst_after=0, use_rdrop=False,
                 reg_alpha=1.0, constraint_range=None, max_nonfinite_losses=5, sample_patch_num=None):
        super().__init__(task, max_nonfinite_losses)
        refuse_sample_patch_num(sample_patch_num)
        self.sentence_avg = sentence_avg
        self.eps = label_smoothing
        self.ignore_prefix_size = ignore_prefix_size
        self.ignore_eos = ignore_eos
        self.report_accuracy = report_accuracy
        self.drop_worst_ratio, self.drop_worst_after = drop_worst_ratio, drop_worst_after
        self.use_rdrop, self.reg_alpha = use_rdrop, reg_alpha
        self.constraint = parse_constraint_range(constraint_range)

    def forward(self, model, sample, update_num=0, reduce=True):
        if self.use_rdrop and model.training:
            sample = _repeat_twice(sample)
        net_output = model(**sample["net_input"])
        loss, nll_loss, ntokens, lprobs, target = self.compute_loss(model, net_output, sample, update_num)
        if self.use_rdrop and model.training:
            half = lprobs.size(0) // 2
            p, q = lprobs[:half], lprobs[half:]
            if self.constraint is not None:
                keep = self._constraint_ids(lprobs.device)
                p, q = p[:, keep], q[:, keep]
            loss = loss + self.reg_alpha * symmetric_kl(p, q)
        skipped = False
        if model.training:
            loss, skipped = self.guard_nonfinite(model, loss, sample)
        sample_size = sample["target"].size(0) if self.sentence_avg else ntokens
        logging_output = {
            "loss": loss.data, "nll_loss": nll_loss.data, "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"], "sample_size": sample_size,
        }
        if model.training:
            # OFATask.optimizer_step skips an update made only of such batches. The key is in every training
            # output because data-parallel ranks sum the outputs key by key.
            logging_output[NONFINITE] = int(skipped)
        if self.report_accuracy:
            mask = target.ne(self.padding_idx)
            logging_output["n_correct"] = utils.item(lprobs.argmax(-1)[mask].eq(target[mask]).sum())
            logging_output["total"] = utils.item(mask.sum())
        return loss, sample_size, logging_output

    def _constraint_ids(self, device):
        start, end = self.constraint
        return torch.cat([torch.arange(4, device=device), torch.arange(start, end, device=device)])

    def lprobs_and_target(self, model, net_output, sample):
        """Flattened log-probabilities [N, V], targets [N] and the allowed-token masks [N, V] or None."""
        masks = sample.get("constraint_masks")
        lprobs = self.constrained_lprobs(model, net_output, masks)
        if sample.get("conf") is not None:  # VQA: weight each answer by its annotator confidence
            lprobs = lprobs * sample["conf"][:, None, None]
        target = model.get_targets(sample, net_output)
        if self.ignore_prefix_size > 0:
            lprobs, target = lprobs[:, self.ignore_prefix_size:], target[:, self.ignore_prefix_size:]
            masks = masks[:, self.ignore_prefix_size:] if masks is not None else None
        keep = target.ne(self.padding_idx)
        if self.ignore_eos:
            keep &= target.ne(self.task.target_dictionary.eos())
        masks = masks[keep] if masks is not None else None
        return lprobs[keep], target[keep], masks

    def compute_loss(self, model, net_output, sample, update_num=0):
        lprobs, target, masks = self.lprobs_and_target(model, net_output, sample)
        allowed = masks if masks is not None else (
            self._constraint_ids(lprobs.device).tolist() if self.constraint is not None else None)
        loss, nll = label_smoothed_nll_loss(lprobs, target, self.eps, allowed)
        if self.drop_worst_ratio > 0 and update_num > self.drop_worst_after:
            k = int(loss.numel() * (1 - self.drop_worst_ratio))
            loss, idx = torch.topk(loss, k=k, largest=False)
            nll, lprobs, target = nll[idx], lprobs[idx], target[idx]
        return loss.sum(), nll.sum(), loss.numel(), lprobs, target

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size, ntokens = TuningCriterion.log_loss_and_counts(total)
        # natural-log units, as OFA logs them (fairseq's stock criteria log base 2)
        metrics.log_scalar("nll_loss", total("nll_loss") / max(sample_size, 1), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        n_total = utils.item(total("total"))
        if n_total > 0:
            metrics.log_scalar("total", n_total)
            metrics.log_scalar("n_correct", utils.item(total("n_correct")))
            metrics.log_derived("accuracy", lambda m: round(m["n_correct"].sum * 100.0 / m["total"].sum, 3))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@register_criterion("ofa_cross_entropy", dataclass=LabelSmoothedCrossEntropyConfig)
class OFACrossEntropy(AdjustLabelSmoothedCrossEntropy):
    """The same criterion under a clearer name."""
