"""The per-chunk core shared by every fused loss: values and the gradient w.r.t. a chunk's logits.

Also what the fused losses share around it: the spec of what to compute, the running totals
over chunks, the final objective, and the hand-over of the gradients stored in the forward.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from rdrop_seq.fused.precision import LOW_PRECISION
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


def chunk_core(
    logits: Tensor,
    lbuf: Tensor,
    pbuf: Optional[Tensor],
    mbuf: Optional[Tensor],
    target: Tensor,
    keep: Optional[Tensor],
    epsilon: float,
    alpha: float,
    with_kl: bool,
    need_grad: bool,
    accuracy: bool,
):
    """Values of one chunk and, if ``need_grad``, the gradient w.r.t. its logits.

    ``logits``: ``[m, c, V]`` (any float dtype, each ``[a]`` slice contiguous;
    may alias ``pbuf``), or ``lbuf`` itself holding log-probabilities already
    (no log-softmax then); ``lbuf``, ``pbuf``: ``[m, c, V]`` accumulation-dtype
    buffers (``pbuf`` only needed with the KL); ``mbuf``: ``[c, V]`` scratch
    (KL only); ``target``: ``[c]`` valid class indices; ``keep``: ``[c]`` bool,
    or None when every position counts.  On return ``lbuf`` holds the gradient
    (rows of pad positions not zeroed: the caller does it).  Returns the chunk's
    sums ``(nll, smooth, kl, n_correct)`` as 0-dim tensors (``n_correct`` None
    unless ``accuracy``), ``smooth`` being ``-sum_v log p_v``.
    """
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


def finish(tot, tot_correct, epsilon, alpha, vocab, dtype):
    nll, smooth, kl = tot[0], tot[1], tot[2]
    e = smoothing_share(epsilon, vocab)
    loss = (1.0 - epsilon - e) * nll + e * smooth + alpha * kl
    return loss.to(dtype), nll.to(dtype), kl.to(dtype), tot_correct


class Totals:
    """Running sums over chunks (float64 on the device: no host synchronisation)."""

    def __init__(self, device, accuracy):
        self.values = torch.zeros(3, dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device) if accuracy else None

    def add(self, nll, smooth, kl, n_correct):
        self.values[0] += nll
        self.values[1] += smooth
        self.values[2] += kl
        if self.correct is not None:
            self.correct += n_correct


def consume_stored_grads(ctx, what: str):
    """The gradients a forward stored in ``ctx.grads``, handed out once (the backward runs once)."""
    if ctx.grads is None:
        raise RuntimeError(
            f"{what}: backward called twice (its stored gradients are consumed by the first backward)"
        )
    grads, ctx.grads = ctx.grads, None
    return grads


def scale_stored_grads(grads, dtypes, grad_loss: Tensor, stored_scale: float = 1.0):
    """Each stored gradient times the incoming one (in place), in its input's dtype (None stays None).

    A bf16/fp16 gradient is multiplied by the incoming gradient as a Python number,
    which the kernels apply in float32 (not rounded to the low-precision dtype first),
    divided by ``stored_scale`` where it was stored scaled (float16: ``FP16_GRAD_SCALE``).
    """
    def scaled(g: Tensor) -> Tensor:
        if g.dtype in LOW_PRECISION:
            return g.mul_(float(grad_loss) / stored_scale)
        return g.mul_(grad_loss.to(g.dtype))

    return [None if g is None else scaled(g).to(d) for g, d in zip(grads, dtypes)]
