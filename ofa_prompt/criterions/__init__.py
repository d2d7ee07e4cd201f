from fairseq.criterions import register_criterion

from .label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropy, LabelSmoothedCrossEntropyConfig
from .scst import ScstRewardCriterion  # noqa: F401  (registers scst_reward_criterion)


@register_criterion("ajust_label_smoothed_cross_entropy", dataclass=LabelSmoothedCrossEntropyConfig)
class AjustLabelSmoothedCrossEntropy(AdjustLabelSmoothedCrossEntropy):
    """OFA's misspelled name of the same criterion, which its caption stage-1 scripts pass."""
