"""``rdrop_label_smoothed_cross_entropy``: R-Drop for translation (and any seq2seq task).

Objective for m = 2, summed over non-pad target tokens::

    LS-CE(copy 1) + LS-CE(copy 2) + alpha * 1/2 (KL(P1||P2) + KL(P2||P1))

with ``sample_size`` = the original batch's ntokens: the official R-Drop
objective at the same alpha.  Validation and generation run the stock single
pass, so validation loss/ppl compare directly with a stock run.
"""

from dataclasses import dataclass

import torch

from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)

from rdrop_seq.criterions.base import RDropConfig, RDropCriterionBase, RDropTerms
from rdrop_seq.losses import rdrop_label_smoothed_loss


@dataclass
class RDropLabelSmoothedCrossEntropyConfig(
    LabelSmoothedCrossEntropyCriterionConfig, RDropConfig
):
    pass


@register_criterion(
    "rdrop_label_smoothed_cross_entropy", dataclass=RDropLabelSmoothedCrossEntropyConfig
)
class RDropLabelSmoothedCrossEntropyCriterion(
    RDropCriterionBase, LabelSmoothedCrossEntropyCriterion
):
    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        rdrop_alpha=5.0,
        rdrop_passes=2,
        rdrop_every=1,
        rdrop_alpha_warmup=0,
    ):
        LabelSmoothedCrossEntropyCriterion.__init__(
            self,
            task,
            sentence_avg,
            label_smoothing,
            ignore_prefix_size=ignore_prefix_size,
            report_accuracy=report_accuracy,
        )
        self.init_rdrop(rdrop_alpha, rdrop_passes, rdrop_every, rdrop_alpha_warmup)

    def loss_terms(self, model, net_input, sample, passes, alpha) -> RDropTerms:
        net_output = model(**net_input)
        # [m*B, T, V] copy-major -> [m*B*T, V]; target [B, T] -> [B*T]
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        terms = rdrop_label_smoothed_loss(
            lprobs, target, self.eps, alpha, passes, ignore_index=self.padding_idx
        )
        n_correct = total = None
        if self.report_accuracy:
            stacked = target.repeat(passes)
            mask = stacked.ne(self.padding_idx)
            n_correct = torch.sum(lprobs.argmax(1).masked_select(mask).eq(stacked.masked_select(mask)))
            total = torch.sum(mask)
        return RDropTerms(terms.loss, terms.nll_loss, terms.kl, n_correct, total)
