"""Loss terms of the criterions whose model ends in a full softmax over the vocabulary.

Three paths compute the same objective (label-smoothed cross-entropy of every
copy + alpha * pair-mean symmetric KL, summed over non-pad positions):

* fused (training, default): when the decoder is a stock fairseq transformer
  decoder, it runs with ``features_only=True`` and
  :func:`rdrop_seq.fused.fused_linear_rdrop_loss` applies the output projection
  inside the loss, chunk by chunk, so no ``[m*N, V]`` tensor ever exists;
* chunked logits (training, default): when the model's output is logits
  normalised by a plain log-softmax but its output layer is not a plain
  projection, :func:`rdrop_seq.fused.chunked_rdrop_loss` works from the logits;
* generic (validation, ``--rdrop-no-fused``, any other model): the criterion's
  own function of ``model.get_normalized_probs``, which in validation is
  bitwise the stock criterion's single pass.
"""

from typing import Optional

import torch

from rdrop_seq.criterions.base import RDropCriterionBase
from rdrop_seq.criterions.output_layer import fusable_output_projection, net_output_is_logits
from rdrop_seq.fused import chunked_rdrop_loss, fused_linear_rdrop_loss
from rdrop_seq.losses import RDropLoss


class SoftmaxRDropCriterion(RDropCriterionBase):
    """Shared ``loss_terms`` for the label-smoothed and plain cross-entropy criterions.

    Subclasses set ``self.eps`` (0 for plain cross-entropy) and implement
    :meth:`generic_terms` on log-probabilities.
    """

    ignore_prefix_size = 0
    report_accuracy = False

    def generic_terms(self, lprobs, target, passes, alpha) -> RDropLoss:
        raise NotImplementedError

    def _prefixed(self, tensor):
        """Drop the first ``--ignore-prefix-size`` target positions ([B, T, ...])."""
        if self.ignore_prefix_size > 0:
            return tensor[:, self.ignore_prefix_size :]
        return tensor

    def loss_terms(self, model, copies, sample, passes, alpha) -> RDropLoss:
        fused = self.fused and model.training
        projection = fusable_output_projection(model) if fused else None
        # what both fused paths take besides their input
        spec = dict(epsilon=self.eps, alpha=alpha, passes=passes, ignore_index=self.padding_idx,
                    chunk_size=self.chunk_size, report_accuracy=bool(self.report_accuracy))
        if projection is not None:
            features, _ = copies.run(model, features_only=True)
            out = fused_linear_rdrop_loss(
                self._prefixed(features), projection.weight, self._prefixed(sample["target"]),
                bias=projection.bias, **spec,
            )
            return self._terms_from_fused(out, sample, passes)
        net_output = copies.run(model)
        if fused and net_output_is_logits(model):
            out = chunked_rdrop_loss(self._prefixed(net_output[0]), self._prefixed(sample["target"]), **spec)
            return self._terms_from_fused(out, sample, passes)
        lprobs = self._prefixed(model.get_normalized_probs(net_output, log_probs=True))
        target = self._prefixed(model.get_targets(sample, net_output))
        terms = self.generic_terms(
            lprobs.reshape(-1, lprobs.size(-1)), target.reshape(-1), passes, alpha
        )
        if self.report_accuracy and terms.n_correct is None:
            n_correct, total = self._accuracy(lprobs.reshape(-1, lprobs.size(-1)), target, passes)
            terms = terms._replace(n_correct=n_correct, total=total)
        return terms

    def _accuracy(self, lprobs, target, passes):
        stacked = target.reshape(-1).repeat(passes)
        mask = stacked.ne(self.padding_idx)
        n_correct = torch.sum(lprobs.argmax(1).masked_select(mask).eq(stacked.masked_select(mask)))
        return n_correct, torch.sum(mask)

    def _terms_from_fused(self, out, sample, passes) -> RDropLoss:
        n_correct: Optional[torch.Tensor] = None
        total: Optional[torch.Tensor] = None
        if self.report_accuracy:
            n_correct = out.n_correct
            total = passes * self._prefixed(sample["target"]).ne(self.padding_idx).sum()
        return out._replace(n_correct=n_correct, total=total)
