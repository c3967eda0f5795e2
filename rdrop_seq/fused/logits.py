"""The R-Drop loss from logits, chunked: for output layers that are no plain projection."""

from typing import Optional

import torch
from torch.autograd.function import once_differentiable
from torch import Tensor

from rdrop_seq.chunking import logits_chunk_size
from rdrop_seq.fused.kernel import LossSpec, Totals, chunk_core, consume_stored_grads, finish, scale_stored_grads
from rdrop_seq.fused.precision import FP16_GRAD_SCALE, FP16_MAX, LOW_PRECISION
from rdrop_seq.losses import RDropLoss, check_copies, compute_dtype


def _chunked_forward(logits, spec: LossSpec, need_grad):
    m, target, ignore_index = spec.passes, spec.target, spec.ignore_index
    n = target.numel()
    vocab = logits.size(-1)
    device, dtype = logits.device, logits.dtype
    acc = compute_dtype(dtype)
    with_kl = spec.with_kl
    logits3 = logits.view(m, n, vocab)

    keep = pad = None
    safe_target = target
    if ignore_index is not None:
        pad = target.eq(ignore_index)
        keep = ~pad
        safe_target = target.masked_fill(pad, 0)
    c = spec.chunk_size or logits_chunk_size(
        vocab, m, device.type, with_kl=with_kl, low_precision=dtype in LOW_PRECISION
    )
    c = max(1, min(int(c), max(n, 1)))

    grad = torch.empty(m * n, vocab, dtype=dtype, device=device) if need_grad else None
    grad3 = grad.view(m, n, vocab) if need_grad else None
    # float32/float64 logits: the gradient is formed in place in its final tensor
    in_place = need_grad and dtype == acc
    lbuf = None if in_place else torch.empty(m * c * vocab, dtype=acc, device=device)
    pbuf = torch.empty(m * c * vocab, dtype=acc, device=device) if with_kl else None
    mbuf = torch.empty(c * vocab, dtype=acc, device=device) if with_kl else None
    scale = FP16_GRAD_SCALE if dtype == torch.float16 else 1.0

    totals = Totals(device, spec.accuracy)
    for start in range(0, n, c):
        cc = min(c, n - start)
        sl = slice(start, start + cc)
        l3 = grad3[:, sl] if in_place else lbuf[: m * cc * vocab].view(m, cc, vocab)
        totals.add(*chunk_core(
            logits3[:, sl], l3,
            pbuf[: m * cc * vocab].view(m, cc, vocab) if with_kl else None,
            mbuf[: cc * vocab].view(cc, vocab) if with_kl else None,
            safe_target[sl], None if keep is None else keep[sl],
            spec.epsilon, spec.alpha, with_kl, need_grad, spec.accuracy,
        ))
        if need_grad and not in_place:
            for a in range(m):
                if scale != 1.0:
                    torch.mul(l3[a], scale, out=grad3[a, sl])
                    grad3[a, sl].nan_to_num_(posinf=FP16_MAX, neginf=-FP16_MAX)
                else:
                    grad3[a, sl].copy_(l3[a])
    if need_grad and pad is not None:
        grad3.index_fill_(1, pad.nonzero().squeeze(1), 0.0)
    values = finish(totals.values, totals.correct, spec.epsilon, spec.alpha, vocab, acc)
    return values, grad, scale


class _ChunkedRDrop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, spec):
        values, grad, scale = _chunked_forward(logits, spec, ctx.needs_input_grad[0])
        ctx.grads, ctx.dtype, ctx.scale = [grad], logits.dtype, scale
        loss, nll, kl, n_correct = values
        ctx.mark_non_differentiable(*(t for t in (nll, kl, n_correct) if t is not None))
        return loss, nll, kl, n_correct

    @staticmethod
    @once_differentiable  # the gradient was computed in the forward: no graph to differentiate again
    def backward(ctx, grad_loss, *unused):
        grads = consume_stored_grads(ctx, "chunked R-Drop loss")
        (grad,) = scale_stored_grads(grads, [ctx.dtype], grad_loss, stored_scale=ctx.scale)
        return grad, None


def chunked_rdrop_loss(
    logits: Tensor,
    target: Tensor,
    *,
    epsilon: float,
    alpha: float,
    passes: int,
    ignore_index: Optional[int] = None,
    chunk_size: Optional[int] = None,
    report_accuracy: bool = True,
) -> RDropLoss:
    """The R-Drop objective from ``[m*N, V]`` logits (any float dtype), chunked.

    For output layers that are no plain projection.  Same values as
    ``rdrop_label_smoothed_loss(log_softmax(logits.float()), ...)``; keeps no
    float32 log-probabilities: the gradient w.r.t. ``logits`` (one ``[m*N, V]``
    tensor in the logits' dtype) is computed during this call, chunk by chunk,
    and scaled in place by the incoming gradient in the backward (which can run
    once).  ``n_correct`` is None when ``report_accuracy`` is False.
    ``chunk_size``: positions (of every copy) at a time, :func:`logits_chunk_size`
    by default.
    """
    vocab = logits.size(-1)
    logits2d = logits.reshape(-1, vocab)
    if logits2d.stride(-1) != 1 or logits2d.stride(0) != vocab:
        logits2d = logits2d.contiguous()
    target1d = target.reshape(-1)
    check_copies(logits2d.size(0), target1d, passes, "logits")
    spec = LossSpec(target1d, float(epsilon), float(alpha), int(passes), ignore_index, chunk_size,
                    bool(report_accuracy))
    with torch.autocast(logits2d.device.type, enabled=False):
        if torch.is_grad_enabled() and logits2d.requires_grad:
            loss, nll, kl, n_correct = _ChunkedRDrop.apply(logits2d, spec)
        else:
            (loss, nll, kl, n_correct), _, _ = _chunked_forward(logits2d, spec, False)
    return RDropLoss(loss, nll, kl, n_correct)
