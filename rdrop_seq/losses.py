"""R-Drop loss math on log-probabilities, in plain PyTorch (no fairseq import): the
objective's terms, their one result type :class:`RDropLoss`, and where alpha weighs the
copies' divergence on the unfused paths (:func:`with_divergence`; the fused losses weigh
it inside their chunk loop, :mod:`rdrop_seq.fused.kernel`: the value in ``finish``, the
gradient as ``beta = alpha / (m - 1)`` in ``chunk_core``).  The divergences themselves
are :mod:`rdrop_seq.divergences`'.

Conventions, used by every criterion of this package:

* The ``m`` dropout copies of a batch are stacked along the first dimension,
  copy ``i`` holding rows ``i*N .. (i+1)*N - 1`` of an ``[m*N, V]`` tensor, where
  ``N`` is the number of target positions of the original batch.
* Every sum runs over non-pad target positions only.
* Divergences are computed in float32 (or float64 if given float64),
  whatever the input dtype.

The R-Drop objective for ``m`` copies is::

    sum_i LS-CE(copy i)  +  alpha * sum_t mean_{i<j} D(P_i, P_j)

with ``D`` one of :data:`rdrop_seq.divergences.DIVERGENCES`; the default, ``sym-kl``,
``D = 1/2 (KL(P_i||P_j) + KL(P_j||P_i))``, makes it for ``m = 2`` the paper's
(and the official implementation's) ``CE_1 + CE_2 + alpha * 1/2 (KL(P_1||P_2) +
KL(P_2||P_1))``.
"""

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from rdrop_seq.divergences import compute_dtype, pair_divergence, squared_disagreement


def label_smoothed_nll_loss(
    lprobs: Tensor,
    target: Tensor,
    epsilon: float,
    ignore_index: Optional[int] = None,
    reduce: bool = True,
):
    """fairseq's label-smoothed NLL (``eps_i = epsilon / (V - 1)``), pad-masked.

    ``lprobs`` is ``[..., V]`` log-probabilities and ``target`` has the same
    leading shape.  Returns ``(loss, nll_loss)``, summed when ``reduce``.  The
    operations are the ones of fairseq's own function, in the same order, so
    the result is bitwise identical to the stock criterion's.
    """
    if target.dim() == lprobs.dim() - 1:
        target = target.unsqueeze(-1)
    nll_loss = -lprobs.gather(dim=-1, index=target)
    smooth_loss = -lprobs.sum(dim=-1, keepdim=True)
    if ignore_index is not None:
        pad_mask = target.eq(ignore_index)
        nll_loss = nll_loss.masked_fill(pad_mask, 0.0)
        smooth_loss = smooth_loss.masked_fill(pad_mask, 0.0)
    nll_loss = nll_loss.squeeze(-1)
    smooth_loss = smooth_loss.squeeze(-1)
    if reduce:
        nll_loss = nll_loss.sum()
        smooth_loss = smooth_loss.sum()
    eps_i = smoothing_share(epsilon, lprobs.size(-1))
    loss = (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss
    return loss, nll_loss


def smoothing_share(epsilon: float, vocab: int) -> float:
    """fairseq's label smoothing: the probability mass ``epsilon / (V - 1)`` of each non-target class."""
    return epsilon / (vocab - 1) if vocab > 1 else 0.0


class RDropLoss(NamedTuple):
    """Summed terms of the R-Drop objective over all copies and non-pad positions: what every
    loss function of this package (plain, fused, adaptive) and every criterion's
    ``loss_terms`` returns."""

    loss: Tensor  # sum_i LS-CE(copy i) + alpha * kl; differentiable
    nll_loss: Tensor  # sum_i NLL(copy i), for the true perplexity
    kl: Tensor  # sum over positions of the pair-mean divergence (symmetric KL by default)
    n_correct: Optional[Tensor] = None  # argmax == target over all copies, where computed
    total: Optional[Tensor] = None  # positions counted for n_correct
    # float16 gradient entries a fused loss saturated at +-65504 (0-dim int64; None: no float16)
    fp16_grad_clamped: Optional[Tensor] = None


def check_copies(rows: int, target: Tensor, passes: int, what: str = "lprobs") -> None:
    """A ValueError unless ``what`` (``rows`` rows) holds ``passes`` copies of ``target``'s positions."""
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    if rows != passes * target.numel():
        raise ValueError(
            f"{what} has {rows} rows; expected passes * targets = {passes} * {target.numel()}"
        )


def with_divergence(
    loss: Tensor, nll_loss: Tensor, alpha: float, passes: int, divergence_sum: Callable[[], Tensor]
) -> RDropLoss:
    """The objective ``loss + alpha * divergence_sum()`` (the place alpha weighs the copies'
    divergence on the unfused paths); ``divergence_sum`` is called only where R-Drop is on
    (``passes > 1`` and ``alpha != 0``), else the divergence is 0."""
    if passes > 1 and alpha != 0:
        kl = divergence_sum()
        loss = loss.to(torch.promote_types(loss.dtype, kl.dtype)) + alpha * kl
    else:
        kl = loss.new_zeros(())
    return RDropLoss(loss, nll_loss, kl)


def _add_divergence(
    loss: Tensor,
    nll_loss: Tensor,
    lprobs: Tensor,
    target: Tensor,
    alpha: float,
    passes: int,
    ignore_index: Optional[int],
    divergence: str,
) -> RDropLoss:
    """``loss + alpha * pair_divergence`` over the non-pad positions of ``target``."""
    mask = None if ignore_index is None else target.reshape(-1).ne(ignore_index)
    return with_divergence(
        loss, nll_loss, alpha, passes, lambda: pair_divergence(lprobs, passes, mask, divergence=divergence)
    )


def rdrop_label_smoothed_loss(
    lprobs: Tensor,
    target: Tensor,
    epsilon: float,
    alpha: float,
    passes: int,
    ignore_index: Optional[int] = None,
    divergence: str = "sym-kl",
) -> RDropLoss:
    """The R-Drop objective on ``[m*N, V]`` log-probabilities and ``[N]`` targets.

    With ``passes == 1`` (or ``alpha == 0``) no KL is computed and the result is
    exactly fairseq's label-smoothed cross-entropy on the stacked batch.
    ``epsilon = 0`` gives plain cross-entropy.
    """
    check_copies(lprobs.size(0), target, passes)
    stacked_target = target.reshape(-1).repeat(passes)
    loss, nll_loss = label_smoothed_nll_loss(
        lprobs, stacked_target, epsilon, ignore_index=ignore_index
    )
    return _add_divergence(
        loss, nll_loss, lprobs, target, alpha, passes, ignore_index, divergence
    )


def rdrop_cross_entropy_loss(
    lprobs: Tensor,
    target: Tensor,
    alpha: float,
    passes: int,
    ignore_index: Optional[int] = None,
    divergence: str = "sym-kl",
) -> RDropLoss:
    """The R-Drop objective with plain cross-entropy (language modelling, classification).

    ``lprobs``: ``[m*N, V]`` log-probabilities of the ``m = passes`` copies,
    copy-major; ``target``: ``[N]``.  The cross-entropy is
    ``F.nll_loss(..., reduction="sum")`` on the stacked target, the operation of
    fairseq's ``cross_entropy`` criterion, so with ``passes == 1`` or
    ``alpha == 0`` the result is bitwise that criterion's on the stacked batch.
    ``nll_loss`` is the same sum (there is no smoothing).
    """
    check_copies(lprobs.size(0), target, passes)
    nll_loss = F.nll_loss(
        lprobs,
        target.reshape(-1).repeat(passes),
        ignore_index=-100 if ignore_index is None else ignore_index,
        reduction="sum",
    )
    return _add_divergence(
        nll_loss, nll_loss, lprobs, target, alpha, passes, ignore_index, divergence
    )


def rdrop_regression_loss(
    outputs: Tensor, target: Tensor, alpha: float, passes: int
) -> RDropLoss:
    """The R-Drop objective for regression: squared errors plus the copies' disagreement.

    ``outputs``: ``[m*N]`` predictions of the ``m = passes`` copies, copy-major;
    ``target``: ``[N]``.  ``loss = sum_i sum_n (y_i,n - t_n)^2 + alpha * kl`` with
    ``kl = sum_n mean_{i<j} (y_i,n - y_j,n)^2`` (for m = 2, ``(y_1 - y_2)^2``);
    computed in float32 (float64 stays float64).  The squared error is
    ``F.mse_loss(..., reduction="sum")`` on the stacked target, the operation of
    fairseq's ``sentence_prediction`` criterion, so with ``passes == 1`` or
    ``alpha == 0`` the result is that criterion's on the stacked batch.
    ``nll_loss`` holds the squared-error sum.
    """
    outputs = outputs.reshape(-1)
    check_copies(outputs.numel(), target, passes, "outputs")
    outputs = outputs.to(compute_dtype(outputs.dtype))
    squared_error = F.mse_loss(
        outputs, target.reshape(-1).to(outputs.dtype).repeat(passes), reduction="sum"
    )
    return with_divergence(
        squared_error, squared_error, alpha, passes, lambda: squared_disagreement(outputs, passes)
    )
