"""The divergence of R-Drop on unlabeled sentences (semi-supervised R-Drop), plain PyTorch.

An unlabeled sentence has no task loss: it contributes only the pair-mean divergence of its
``m`` dropout copies' outputs, as a labeled one does besides its cross-entropy.  Two controls
of consistency training (UDA, Xie et al. 2019) select and shape what is compared:

* a confidence mask: only sentences whose prediction, the mean of the copies' class
  distributions taken without gradient, gives its top class a probability above
  ``confidence`` count (0: every sentence);
* sharpening, with ``kl-detached`` only: the fixed side of each KL is the other copy's
  distribution at ``temperature`` T, ``softmax(log P / T)`` (T < 1 sharpens; T = 1 is
  ``kl-detached`` itself)::

      D(P_i, P_j) = 1/2 (KL(sg P_j^(1/T) || P_i) + KL(sg P_i^(1/T) || P_j))

Conventions of :mod:`rdrop_seq.losses`: copies stacked copy-major along the first
dimension, arithmetic in float32 (float64 stays float64).
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rdrop_seq.divergences import (
    check_divergence, compute_dtype, copy_pairs, pair_divergence, squared_disagreement,
)


def check_unlabeled_settings(divergence: str, confidence: float, temperature: float, regression: bool) -> None:
    """A ValueError naming the flag for settings that cannot go together."""
    if not 0 <= confidence < 1:
        raise ValueError(f"--unlabeled-confidence={confidence}: must be in [0, 1)")
    if not temperature > 0:
        raise ValueError(f"--unlabeled-temperature={temperature}: must be > 0")
    if temperature != 1 and check_divergence(divergence) != "kl-detached":
        raise ValueError(
            f"--unlabeled-temperature={temperature} sharpens the fixed side of a detached KL: it needs "
            f"--rdrop-divergence kl-detached, got {divergence}")
    if regression and (confidence > 0 or temperature != 1):
        raise ValueError("--unlabeled-confidence and --unlabeled-temperature compare class distributions: "
                         "with --regression-target leave them out")


def _sharpened_kl_detached(copies: Tensor, temperature: float) -> Tensor:
    """Per sentence, the pair mean of ``1/2 (KL(sg P_j^(1/T) || P_i) + KL(sg P_i^(1/T) || P_j))``
    of ``[m, U, C]`` log-probabilities."""
    fixed = F.log_softmax(copies.detach() / temperature, dim=-1)
    pairs = copy_pairs(copies.size(0))

    def kl(target, lprobs):
        return (target.exp() * (target - lprobs)).sum(-1)

    return sum(0.5 * (kl(fixed[j], copies[i]) + kl(fixed[i], copies[j])) for i, j in pairs) / len(pairs)


def unlabeled_divergence(
    logits: Tensor,
    passes: int,
    divergence: str = "sym-kl",
    confidence: float = 0.0,
    temperature: float = 1.0,
) -> Tuple[Tensor, Tensor]:
    """``(sum, kept)``: the pair-mean divergence of the copies' class distributions, summed over
    the unlabeled sentences that pass the confidence mask, and how many pass.

    ``logits``: ``[m*U, C]`` class scores of the ``m = passes`` copies of ``U`` sentences,
    copy-major.
    """
    lprobs = F.log_softmax(logits.to(compute_dtype(logits.dtype)), dim=-1)
    copies = lprobs.view(passes, -1, lprobs.size(-1))
    if temperature != 1.0:
        per_sentence = _sharpened_kl_detached(copies, temperature)
    else:
        per_sentence = pair_divergence(lprobs, passes, reduce=False, divergence=divergence)
    if confidence > 0:
        keep = copies.detach().exp().mean(0).max(-1).values > confidence
        return per_sentence.masked_fill(~keep, 0.0).sum(), keep.sum()
    return per_sentence.sum(), torch.tensor(per_sentence.numel(), device=per_sentence.device)


def unlabeled_disagreement(outputs: Tensor, passes: int) -> Tuple[Tensor, Tensor]:
    """Regression: ``(sum over sentences of the pair-mean squared difference of the copies'
    outputs, sentences)``; ``outputs``: ``[m*U]`` copy-major."""
    return squared_disagreement(outputs, passes), torch.tensor(outputs.numel() // passes, device=outputs.device)
