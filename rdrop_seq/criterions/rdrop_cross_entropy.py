"""``rdrop_cross_entropy``: R-Drop for full-softmax language models (and any
model that fairseq's stock ``cross_entropy`` criterion trains).

Objective for m = 2, summed over non-pad target tokens::

    CE(copy 1) + CE(copy 2) + alpha * 1/2 (KL(P1||P2) + KL(P2||P1))

from one forward over ``[x; x]``, with ``sample_size`` = the original batch's
token count (sentences with ``--sentence-avg``).  In training the output
projection and the loss are fused (see :mod:`rdrop_seq.criterions.softmax_terms`)
for fairseq's transformer decoders; with ``--rdrop-no-fused`` (and for other
models) the cross-entropy is the stock criterion's operation
(``F.nll_loss(reduction="sum")``), so with ``--rdrop-alpha 0`` loss and
gradients are bitwise those of ``cross_entropy`` on the doubled batch.
Validation runs the stock single pass.  Default alpha: 1, the paper's
language-modelling setting.
"""

from dataclasses import dataclass

from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion, CrossEntropyCriterionConfig

from rdrop_seq.criterions.config import FusedLossConfig, RDropLMConfig
from rdrop_seq.criterions.softmax_terms import SoftmaxRDropCriterion
from rdrop_seq.losses import RDropLoss, rdrop_cross_entropy_loss


@dataclass
class RDropCrossEntropyConfig(CrossEntropyCriterionConfig, RDropLMConfig, FusedLossConfig):
    pass


@register_criterion("rdrop_cross_entropy", dataclass=RDropCrossEntropyConfig)
class RDropCrossEntropyCriterion(SoftmaxRDropCriterion, CrossEntropyCriterion):
    eps = 0.0  # no label smoothing

    def __init__(self, cfg: RDropCrossEntropyConfig, task):
        CrossEntropyCriterion.__init__(self, task, cfg.sentence_avg)
        self.init_rdrop(cfg)

    def generic_terms(self, lprobs, target, passes, alpha) -> RDropLoss:
        return rdrop_cross_entropy_loss(
            lprobs, target, alpha, passes, ignore_index=self.padding_idx,
            divergence=self.divergence,
        )
