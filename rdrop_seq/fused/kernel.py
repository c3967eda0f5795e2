"""The per-chunk core shared by every fused loss: values and the gradient w.r.t. a chunk's scores.

Also what it takes and gives: the spec of what to compute (:class:`LossSpec`), a chunk's
buffers (:class:`Workspace`) and the final objective from the sums over chunks (:func:`finish`).
The loop over chunks is :mod:`rdrop_seq.fused.loop`'s.
"""

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from rdrop_seq.losses import smoothing_share


@dataclass(frozen=True, eq=False)
class LossSpec:
    """What a chunked R-Drop loss computes, besides its tensor inputs."""

    target: Tensor  # [N] class indices of the original batch's positions
    epsilon: float  # label smoothing (0: cross-entropy)
    alpha: float  # weight of the pair-mean symmetric KL
    passes: int  # m, the dropout copies stacked copy-major
    ignore_index: Optional[int]  # padding (None: every position counts)
    chunk_size: Optional[int]  # positions per chunk (None: the path's policy)
    accuracy: bool  # also count argmax == target

    @property
    def with_kl(self) -> bool:
        return self.passes > 1 and self.alpha != 0


class Workspace(NamedTuple):
    """A chunk's accumulation-dtype buffers (views of the loop's, or the path's own)."""

    logp: Tensor  # [m, c, V] log-probabilities, then the gradient w.r.t. the chunk's scores
    probs: Optional[Tensor]  # [m, c, V] probabilities (KL only; may hold the scores on entry)
    scratch: Optional[Tensor]  # [c, V] per-position scratch (KL only)


def chunk_core(scores: Tensor, ws: Workspace, target: Tensor, keep: Optional[Tensor],
               spec: LossSpec, need_grad: bool):
    """Values of one chunk and, if ``need_grad``, the gradient w.r.t. its scores.

    ``scores``: ``[m, c, V]`` (any float dtype, each ``[a]`` slice contiguous;
    may alias ``ws.probs``), or ``ws.logp`` itself holding log-probabilities
    already (no log-softmax then); ``target``: ``[c]`` valid class indices;
    ``keep``: ``[c]`` bool, or None when every position counts.  On return
    ``ws.logp`` holds the gradient (rows of pad positions not zeroed: the
    caller does it).  Returns the chunk's sums ``(nll, smooth, kl, n_correct)``
    as 0-dim tensors (``n_correct`` None unless ``spec.accuracy``), ``smooth``
    being ``-sum_v log p_v``.
    """
    lbuf, pbuf, mbuf = ws
    logits, epsilon, alpha, with_kl, accuracy = scores, spec.epsilon, spec.alpha, spec.with_kl, spec.accuracy
    m, c, vocab = lbuf.shape
    acc = lbuf.dtype
    if logits is not lbuf:  # else the caller wrote log-probabilities into lbuf itself
        for a in range(m):
            torch.log_softmax(logits[a], -1, dtype=acc, out=lbuf[a])
    tgt = target.view(1, c, 1).expand(m, c, 1)
    nll_rows = lbuf.gather(-1, tgt).view(m, c)
    # the smoothing term's sum only where it counts (no pass over the chunk for epsilon = 0)
    smooth_rows = lbuf.sum(-1) if epsilon != 0 else None
    n_correct = None
    if keep is not None:
        keep_f = keep.view(1, c).to(acc)
        nll_rows = nll_rows * keep_f
        if smooth_rows is not None:
            smooth_rows.mul_(keep_f)
    if accuracy:
        correct = lbuf.argmax(-1).eq_(target.view(1, c))
        if keep is not None:
            correct.logical_and_(keep.view(1, c))
        n_correct = correct.sum()
    nll = nll_rows.sum().neg_()
    smooth = lbuf.new_zeros(()) if smooth_rows is None else smooth_rows.sum().neg_()

    e = smoothing_share(epsilon, vocab)
    kl = lbuf.new_zeros(())
    if with_kl:
        for a in range(m):
            torch.exp(lbuf[a], out=pbuf[a])
        beta = alpha / (m - 1)
        k_rows = lbuf.new_empty(m, c)  # K_a = sum_v p_a D_a, D_a = l_a - mean_b l_b
        if m == 2:
            # D_1 = (l_1 - l_2) / 2 = -D_2: keep d = l_1 - l_2 only, in place of l_1
            d = torch.sub(lbuf[0], lbuf[1], out=lbuf[0])
            for a, sign in ((0, 0.5), (1, -0.5)):
                torch.mul(pbuf[a], d, out=mbuf)
                torch.sum(mbuf, -1, out=k_rows[a])
                k_rows[a].mul_(sign)
        else:
            torch.sum(lbuf, 0, out=mbuf)
            for a in range(m):
                lbuf[a].sub_(mbuf, alpha=1.0 / m)
            for a in range(m):
                torch.mul(pbuf[a], lbuf[a], out=mbuf)
                torch.sum(mbuf, -1, out=k_rows[a])
        kl_rows = k_rows.sum(0).div_(m - 1)
        if keep is not None:
            kl_rows.mul_(keep.view(c).to(acc))
        kl = kl_rows.sum()
        if need_grad:
            # G_a = p_a (beta (D_a - K_a + 1) + 1) - beta mean_b p_b - e - (1-eps-e) onehot
            row_const = k_rows.neg_().add_(1.0).mul_(beta).add_(1.0).unsqueeze(-1)
            neg_e = lbuf.new_full((), -e)
            if m == 2:
                # X_a = beta D_a + row_const_a - beta/2;  G_a = p_a X_a - beta/2 p_b - e
                row_const.sub_(beta / 2)
                torch.add(row_const[1], d, alpha=-beta / 2, out=lbuf[1])
                torch.add(row_const[0], d, alpha=beta / 2, out=lbuf[0])
                for a, b in ((0, 1), (1, 0)):
                    torch.add(neg_e, pbuf[b], alpha=-beta / 2, out=mbuf)
                    torch.addcmul(mbuf, pbuf[a], lbuf[a], out=lbuf[a])
            else:
                for a in range(m):
                    torch.add(row_const[a], lbuf[a], alpha=beta, out=lbuf[a])
                torch.sum(pbuf, 0, out=mbuf)
                mbuf.mul_(-beta / m).sub_(e)
                for a in range(m):
                    torch.addcmul(mbuf, pbuf[a], lbuf[a], out=lbuf[a])
    elif need_grad:
        # G = p - e - (1-eps-e) onehot
        lbuf.exp_()
        if e != 0.0:
            lbuf.sub_(e)
    if need_grad:
        lbuf.scatter_add_(-1, tgt, lbuf.new_full((1, 1, 1), -(1.0 - epsilon - e)).expand(m, c, 1))
    return nll, smooth, kl, n_correct


def finish(sums: Tensor, epsilon: float, alpha: float, vocab: int, dtype):
    """The objective from the sums over chunks, in ``dtype``: ``(loss, nll, kl)``.

    ``sums``: ``[nll, smooth, kl]`` (float64), the chunks' ``-sum log p_target``,
    ``-sum_v log p_v`` and pair-mean symmetric KL over counted positions of every copy;
    with ``e = epsilon / (V - 1)`` (fairseq's label smoothing)::

        loss = (1 - epsilon - e) * nll + e * smooth + alpha * kl
    """
    nll, smooth, kl = sums[0], sums[1], sums[2]
    e = smoothing_share(epsilon, vocab)
    loss = (1.0 - epsilon - e) * nll + e * smooth + alpha * kl
    return loss.to(dtype), nll.to(dtype), kl.to(dtype)
