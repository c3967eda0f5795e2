"""``rdrop_label_smoothed_cross_entropy``: R-Drop for translation (and any seq2seq task).

Objective for m = 2, summed over non-pad target tokens::

    LS-CE(copy 1) + LS-CE(copy 2) + alpha * 1/2 (KL(P1||P2) + KL(P2||P1))

with ``sample_size`` = the original batch's ntokens: the official R-Drop
objective at the same alpha.  Validation and generation run the stock single
pass, so validation loss/ppl compare directly with a stock run.
"""

from dataclasses import dataclass

from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)

from rdrop_seq.criterions.config import FusedLossConfig, RDropConfig
from rdrop_seq.criterions.softmax_terms import SoftmaxRDropCriterion
from rdrop_seq.losses import RDropLoss, rdrop_label_smoothed_loss


@dataclass
class RDropLabelSmoothedCrossEntropyConfig(
    LabelSmoothedCrossEntropyCriterionConfig, RDropConfig, FusedLossConfig
):
    pass


@register_criterion(
    "rdrop_label_smoothed_cross_entropy", dataclass=RDropLabelSmoothedCrossEntropyConfig
)
class RDropLabelSmoothedCrossEntropyCriterion(
    SoftmaxRDropCriterion, LabelSmoothedCrossEntropyCriterion
):
    def __init__(self, cfg: RDropLabelSmoothedCrossEntropyConfig, task):
        LabelSmoothedCrossEntropyCriterion.__init__(
            self,
            task,
            cfg.sentence_avg,
            cfg.label_smoothing,
            ignore_prefix_size=cfg.ignore_prefix_size,
            report_accuracy=cfg.report_accuracy,
        )
        self.init_rdrop(cfg)

    def generic_terms(self, lprobs, target, passes, alpha) -> RDropLoss:
        return rdrop_label_smoothed_loss(
            lprobs, target, self.eps, alpha, passes, ignore_index=self.padding_idx,
            divergence=self.divergence,
        )
