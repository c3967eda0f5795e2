"""The R-Drop loss from logits, chunked: for output layers that are no plain projection."""

from typing import Optional

import torch
from torch.autograd.function import once_differentiable
from torch import Tensor

from rdrop_seq.chunking import logits_chunk_size
from rdrop_seq.fused.kernel import LossSpec
from rdrop_seq.fused.loop import ChunkLoop, Positions
from rdrop_seq.fused.precision import LOW_PRECISION, grad_scale, store_scaled
from rdrop_seq.fused.stored_grads import consume_stored_grads, scale_stored_grads
from rdrop_seq.losses import RDropLoss, check_copies, compute_dtype


class _LogitsLoop(ChunkLoop):
    """Scores: the chunk's slice of the ``[m, N, V]`` logits (every position, pads masked);
    gradient: into the same slice of one ``[m*N, V]`` tensor in the logits' dtype -- formed
    there in place for float32/float64 logits, else converted from the chunk's buffer
    (float16: times ``FP16_GRAD_SCALE``, saturated).  Pad rows are zeroed at the end."""

    def __init__(self, logits: Tensor, spec: LossSpec, need_grad: bool):
        m, n, vocab = spec.passes, spec.target.numel(), logits.size(-1)
        device, dtype = logits.device, logits.dtype
        acc = compute_dtype(dtype)
        positions = Positions(spec.target, spec.ignore_index, m, drop_padding=False)
        default = logits_chunk_size(vocab, m, device.type, with_kl=spec.with_kl,
                                    low_precision=dtype in LOW_PRECISION)
        self.grad = torch.empty(m * n, vocab, dtype=dtype, device=device) if need_grad else None
        self.grad3 = self.grad.view(m, n, vocab) if need_grad else None
        # float32/float64 logits: the gradient is formed in place in its final tensor
        self.in_place = need_grad and dtype == acc
        super().__init__(spec, positions, vocab, default, device, acc, need_grad,
                         logp_buffer=not self.in_place, count_clamped=dtype == torch.float16)
        self.logits3 = logits.view(m, n, vocab)
        self.scale = grad_scale(dtype)

    def workspace(self, chunk):
        ws = super().workspace(chunk)
        return ws._replace(logp=self.grad3[:, chunk.span]) if self.in_place else ws

    def scores(self, chunk, ws):
        return self.logits3[:, chunk.span]

    def take_grad(self, chunk, grad):
        if not self.in_place:
            for a in range(self.spec.passes):
                store_scaled(grad[a], self.grad3[a, chunk.span], self.scale, self.clamped, chunk.keep)

    def stored_grads(self):
        if self.positions.pad_index is not None:
            self.grad3.index_fill_(1, self.positions.pad_index, 0.0)
        return [self.grad]


def _chunked_forward(logits: Tensor, spec: LossSpec, need_grad: bool):
    """``((loss, nll, kl, n_correct, fp16_grad_clamped), [grad or None], stored scale)``."""
    loop = _LogitsLoop(logits, spec, need_grad)
    loss, nll, kl = loop.run()
    grads = loop.stored_grads() if need_grad else [None]
    return (loss, nll, kl, loop.correct, loop.clamped), grads, loop.scale


class _ChunkedRDrop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, spec):
        values, grads, scale = _chunked_forward(logits, spec, ctx.needs_input_grad[0])
        ctx.grads, ctx.dtype, ctx.scale = grads, logits.dtype, scale
        ctx.mark_non_differentiable(*(t for t in values[1:] if t is not None))
        return values

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
    once).  ``n_correct`` is None when ``report_accuracy`` is False;
    ``fp16_grad_clamped`` as for :func:`~rdrop_seq.fused.fused_linear_rdrop_loss`.
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
            loss, nll, kl, n_correct, clamped = _ChunkedRDrop.apply(logits2d, spec)
        else:
            (loss, nll, kl, n_correct, clamped), _, _ = _chunked_forward(logits2d, spec, False)
    return RDropLoss(loss, nll, kl, n_correct, fp16_grad_clamped=clamped)
