"""The output projection fused with the R-Drop loss: no ``[m*N, V]`` logits ever exist."""

from typing import Optional

import torch
from torch.autograd.function import once_differentiable
from torch import Tensor

from rdrop_seq.chunking import auto_chunk_size
from rdrop_seq.fused.kernel import LossSpec, Totals, chunk_core, consume_stored_grads, finish, scale_stored_grads
from rdrop_seq.fused.precision import FP16_GRAD_SCALE, FP16_MAX, LOW_PRECISION, mm_low, use_low_precision_gemm
from rdrop_seq.losses import RDropLoss, check_copies, compute_dtype


def _fused_forward(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    spec: LossSpec,
    need_h: bool,
    need_w: bool,
    need_b: bool,
):
    m, target, ignore_index = spec.passes, spec.target, spec.ignore_index
    n = target.numel()
    vocab, hdim = weight.shape
    device, dtype = hidden.device, hidden.dtype
    acc = compute_dtype(dtype)
    low = dtype in LOW_PRECISION
    with_kl = spec.with_kl
    need_grad = need_h or need_w or need_b

    # Only non-pad positions are computed; the rows of pads get a zero gradient.
    if ignore_index is None:
        positions = None
        count = n
    else:
        pad = target.eq(ignore_index)
        positions = (~pad).nonzero().squeeze(1)
        count = positions.numel()
        if count == n:
            positions = None  # no padding: contiguous slices, no gathers
    c = spec.chunk_size or auto_chunk_size(vocab, hdim, m, with_kl=with_kl, low_precision=low)
    c = max(1, min(int(c), max(count, 1)))

    # The gradients are stored until the backward, which returns them in the inputs'
    # dtype: bf16 ones are stored in bf16 (half the memory; bf16 has float32's range,
    # so scaling them by the incoming gradient there cannot overflow), the others in
    # the accumulation dtype (fp16 ones are scaled by the loss scale in the backward).
    # Where a CPU multiplies bf16 natively the weight gradient is also summed over the
    # chunks in bf16, in place (one rounding per chunk, as bf16 training sums the
    # gradients of its micro-batches): no [V, H] float32 tensor at all.
    store = torch.bfloat16 if dtype == torch.bfloat16 else acc
    grad_h = grad_h3 = grad_w = grad_b = None
    if need_h:
        grad_h = torch.empty(m * n, hdim, dtype=store, device=device)
        grad_h3 = grad_h.view(m, n, hdim)
        if count < n:
            grad_h3.index_fill_(1, pad.nonzero().squeeze(1), 0.0)
    if need_b:
        grad_b = torch.zeros(vocab, dtype=acc, device=device)

    pbuf = torch.empty(m * c * vocab, dtype=acc, device=device)
    lbuf = torch.empty(m * c * vocab, dtype=acc, device=device)
    mbuf = torch.empty(c * vocab, dtype=acc, device=device) if with_kl else None
    # low precision: a chunk's scores are written into the storage of the log-probabilities'
    # buffer (copied to float32 before the log-softmax overwrites it), its gradient into that
    # of the probabilities' buffer (free once the chunk's gradient is formed): no third buffer
    low_in_l = lbuf.view(dtype) if low else None
    low_in_p = pbuf.view(dtype) if low else None
    lowp_gemm = low and need_grad and use_low_precision_gemm(device, dtype)
    weight_acc = weight.to(acc) if (need_h and low and not lowp_gemm) else None
    scale = FP16_GRAD_SCALE if dtype == torch.float16 else 1.0
    weight_t = weight.t()
    hidden3 = hidden.view(m, n, hdim)
    if positions is not None:
        offsets = (torch.arange(m, device=device) * n).view(m, 1)

    totals = Totals(device, spec.accuracy)
    for start in range(0, count, c):
        cc = min(c, count - start)
        r = m * cc
        if positions is None:
            h = hidden3[:, start:start + cc].reshape(r, hdim)
            tgt = target[start:start + cc]
        else:
            pos = positions[start:start + cc]
            rows = (offsets + pos.view(1, cc)).view(-1)
            h = hidden.index_select(0, rows)
            tgt = target.index_select(0, pos)
        p2 = pbuf[: r * vocab].view(r, vocab)
        l2 = lbuf[: r * vocab].view(r, vocab)
        z = low_in_l[: r * vocab].view(r, vocab) if low else p2
        if bias is None:
            torch.mm(h, weight_t, out=z)
        else:
            torch.addmm(bias, h, weight_t, out=z)
        if low:
            p2.copy_(z)
        totals.add(*chunk_core(
            p2.view(m, cc, vocab), l2.view(m, cc, vocab), p2.view(m, cc, vocab),
            mbuf[: cc * vocab].view(cc, vocab) if with_kl else None,
            tgt, None, spec.epsilon, spec.alpha, with_kl, need_grad, spec.accuracy,
        ))
        if not need_grad:
            continue
        g = l2  # [r, V]: gradient w.r.t. the chunk's logits
        if need_b:
            grad_b.add_(g.sum(0))
        if lowp_gemm:
            g_low = low_in_p[: r * vocab].view(r, vocab)
            if scale != 1.0:
                torch.mul(g, scale, out=g_low)
                g_low.nan_to_num_(posinf=FP16_MAX, neginf=-FP16_MAX)
            else:
                g_low.copy_(g)  # a plain conversion: cheaper than a multiplication into bf16
            gh = mm_low(g_low, weight) if need_h else None
            if need_h and scale != 1.0:
                gh.mul_(1.0 / scale)
            if need_w and grad_w is not None and grad_w.dtype == torch.bfloat16:
                grad_w.addmm_(g_low.t(), h)  # a CPU's bf16 product, summed in place
            elif need_w:
                gw = mm_low(g_low.t(), h)
                if scale != 1.0:
                    gw.mul_(1.0 / scale)
                grad_w = gw if grad_w is None else grad_w.add_(gw)
        else:
            gh = torch.mm(g, weight if weight_acc is None else weight_acc) if need_h else None
            if need_w:
                h_acc = h if h.dtype == acc else h.to(acc)
                if grad_w is None:
                    grad_w = torch.mm(g.t(), h_acc)
                else:
                    grad_w.addmm_(g.t(), h_acc)
        if need_h:
            if positions is None:
                grad_h3[:, start:start + cc].copy_(gh.view(m, cc, hdim))
            else:
                grad_h.index_copy_(0, rows, gh.to(grad_h.dtype))
    if need_w and grad_w is None:  # every position is padding
        grad_w = torch.zeros(vocab, hdim, dtype=acc, device=device)
    if need_w:
        grad_w = grad_w.to(store)
    if need_b:
        grad_b = grad_b.to(store)
    values = finish(totals.values, totals.correct, spec.epsilon, spec.alpha, vocab, acc)
    return values, (grad_h, grad_w, grad_b)


class _FusedLinearRDrop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, spec):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        values, grads = _fused_forward(hidden, weight, bias, spec, need_h, need_w, need_b)
        ctx.grads = grads
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        loss, nll, kl, n_correct = values
        ctx.mark_non_differentiable(*(t for t in (nll, kl, n_correct) if t is not None))
        return loss, nll, kl, n_correct

    @staticmethod
    @once_differentiable  # the gradient was computed in the forward: no graph to differentiate again
    def backward(ctx, grad_loss, *unused):
        out = scale_stored_grads(consume_stored_grads(ctx, "fused R-Drop loss"), ctx.dtypes, grad_loss)
        return out[0], out[1], out[2], None


def fused_linear_rdrop_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Optional[Tensor] = None,
    epsilon: float,
    alpha: float,
    passes: int,
    ignore_index: Optional[int] = None,
    chunk_size: Optional[int] = None,
    report_accuracy: bool = True,
) -> RDropLoss:
    """R-Drop LS-CE + KL from the final hidden states and the output projection.

    ``hidden``: ``[m*N, H]`` (or ``[m*B, T, H]``), the ``m = passes`` copies
    stacked copy-major; ``weight``: ``[V, H]``; ``bias``: ``[V]`` or None;
    ``target``: ``N`` class indices (any shape).  Logits are
    ``hidden @ weight.T + bias`` in the input dtype, normalised in float32
    (float64 for float64 inputs).  Same objective and values as
    ``rdrop_label_smoothed_loss(log_softmax(logits.float()), ...)`` (``passes=1``
    or ``alpha=0``: fairseq's label-smoothed cross-entropy; ``epsilon=0``:
    cross-entropy), without ever holding an ``[m*N, V]`` tensor: ``chunk_size``
    positions (of every copy) at a time, :func:`auto_chunk_size` by default.
    Gradients w.r.t. ``hidden``, ``weight`` and ``bias`` are computed during
    this call (only those that require grad, none under ``torch.no_grad()``)
    and scaled by the incoming gradient in the backward, which can run once.
    ``n_correct`` is None when ``report_accuracy`` is False (saves an argmax).
    """
    hdim = weight.size(-1)
    if weight.dim() != 2 or hidden.size(-1) != hdim:
        raise ValueError(
            f"weight must be [V, H] and hidden [..., H]; got {tuple(weight.shape)} "
            f"and {tuple(hidden.shape)}"
        )
    if bias is not None and bias.shape != (weight.size(0),):
        raise ValueError(f"bias must be [V] = [{weight.size(0)}], got {tuple(bias.shape)}")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        # what F.linear does under autocast: everything in the autocast dtype
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    elif weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        raise ValueError("hidden, weight and bias must have the same dtype")
    hidden2d = hidden.reshape(-1, hdim)
    if not hidden2d.is_contiguous():
        hidden2d = hidden2d.contiguous()
    target1d = target.reshape(-1)
    check_copies(hidden2d.size(0), target1d, passes, "hidden")
    spec = LossSpec(target1d, float(epsilon), float(alpha), int(passes), ignore_index, chunk_size,
                    bool(report_accuracy))
    inputs = (hidden2d, weight) + (() if bias is None else (bias,))
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            loss, nll, kl, n_correct = _FusedLinearRDrop.apply(hidden2d, weight, bias, spec)
        else:
            (loss, nll, kl, n_correct), _ = _fused_forward(hidden2d, weight, bias, spec, False, False, False)
    return RDropLoss(loss, nll, kl, n_correct)
