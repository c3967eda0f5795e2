"""The output projection fused with the R-Drop loss: no ``[m*N, V]`` logits ever exist."""

from typing import Optional

import torch
from torch.autograd.function import once_differentiable
from torch import Tensor

from rdrop_seq.chunking import auto_chunk_size
from rdrop_seq.fused.kernel import LossSpec
from rdrop_seq.fused.loop import ChunkLoop, Positions
from rdrop_seq.fused.precision import LOW_PRECISION, grad_scale, mm_low, store_scaled, use_low_precision_gemm
from rdrop_seq.fused.stored_grads import consume_stored_grads, scale_stored_grads
from rdrop_seq.losses import RDropLoss, check_copies, compute_dtype


class _ProjectionLoop(ChunkLoop):
    """Scores: ``h @ W.T + b`` of the chunk's rows of ``hidden`` (pad positions dropped);
    gradients: ``G W`` into the chunk's rows of grad(hidden), ``G^T h`` and ``sum G`` summed
    over the chunks into grad(weight) and grad(bias).

    The gradients are stored until the backward, which returns them in the inputs' dtype:
    bf16 ones are stored in bf16 (half the memory; bf16 has float32's range, so scaling
    them by the incoming gradient there cannot overflow), the others in the accumulation
    dtype (fp16 ones are scaled by the loss scale in the backward).  Where a CPU multiplies
    bf16 natively the weight gradient is also summed over the chunks in bf16, in place (one
    rounding per chunk, as bf16 training sums the gradients of its micro-batches): no
    ``[V, H]`` float32 tensor at all.
    """

    def __init__(self, hidden, weight, bias, spec: LossSpec, need_h, need_w, need_b):
        m = spec.passes
        n = spec.target.numel()
        vocab, hdim = weight.shape
        device, dtype = hidden.device, hidden.dtype
        acc = compute_dtype(dtype)
        self.low = low = dtype in LOW_PRECISION
        need_grad = need_h or need_w or need_b
        positions = Positions(spec.target, spec.ignore_index, m, drop_padding=True)
        default = auto_chunk_size(vocab, hdim, m, with_kl=spec.with_kl, low_precision=low)
        # the scores are written into the probabilities' buffer (which the KL may not need)
        super().__init__(spec, positions, vocab, default, device, acc, need_grad, probs_buffer=True,
                         count_clamped=dtype == torch.float16)
        self.hidden, self.weight, self.bias, self.weight_t = hidden, weight, bias, weight.t()
        self.need_h, self.need_w, self.need_b = need_h, need_w, need_b
        self.store = torch.bfloat16 if dtype == torch.bfloat16 else acc
        self.grad_h = self.grad_w = self.grad_b = None
        if need_h:
            self.grad_h = torch.empty(m * n, hdim, dtype=self.store, device=device)
            if positions.pad_index is not None:  # the rows of pads get a zero gradient
                self.grad_h.view(m, n, hdim).index_fill_(1, positions.pad_index, 0.0)
        if need_b:
            self.grad_b = torch.zeros(vocab, dtype=acc, device=device)
        # low precision: a chunk's scores are written into the storage of the log-probabilities'
        # buffer (copied to float32 before the log-softmax overwrites it), its gradient into that
        # of the probabilities' buffer (free once the chunk's gradient is formed): no third buffer
        self.low_in_logp = self.logp_flat.view(dtype) if low else None
        self.low_in_probs = self.probs_flat.view(dtype) if low else None
        self.lowp_gemm = low and need_grad and use_low_precision_gemm(device, dtype)
        self.weight_acc = weight.to(acc) if (need_h and low and not self.lowp_gemm) else None
        self.scale = grad_scale(dtype)
        self.h = None  # the current chunk's rows of hidden

    def scores(self, chunk, ws):
        r, vocab = self.spec.passes * chunk.size, self.vocab
        h = self.h = self.positions.take(self.hidden, chunk)
        p2 = ws.probs.view(r, vocab)
        z = self.low_in_logp[: r * vocab].view(r, vocab) if self.low else p2
        if self.bias is None:
            torch.mm(h, self.weight_t, out=z)
        else:
            torch.addmm(self.bias, h, self.weight_t, out=z)
        if self.low:
            p2.copy_(z)
        return ws.probs

    def take_grad(self, chunk, grad):
        r, vocab, h, scale = self.spec.passes * chunk.size, self.vocab, self.h, self.scale
        need_h, need_w, grad_w = self.need_h, self.need_w, self.grad_w
        g = grad.view(r, vocab)
        if self.need_b:
            self.grad_b.add_(g.sum(0))
        if self.lowp_gemm:
            g_low = store_scaled(g, self.low_in_probs[: r * vocab].view(r, vocab), scale, self.clamped)
            gh = mm_low(g_low, self.weight) if need_h else None
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
            gh = torch.mm(g, self.weight if self.weight_acc is None else self.weight_acc) if need_h else None
            if need_w:
                h_acc = h if h.dtype == self.acc else h.to(self.acc)
                if grad_w is None:
                    grad_w = torch.mm(g.t(), h_acc)
                else:
                    grad_w.addmm_(g.t(), h_acc)
        self.grad_w = grad_w
        if need_h:
            self.positions.put(self.grad_h, chunk, gh)

    def stored_grads(self):
        grad_w, grad_b = self.grad_w, self.grad_b
        if self.need_w and grad_w is None:  # every position is padding
            grad_w = torch.zeros(self.weight.shape, dtype=self.acc, device=self.weight.device)
        if self.need_w:
            grad_w = grad_w.to(self.store)
        if self.need_b:
            grad_b = grad_b.to(self.store)
        return [self.grad_h, grad_w, grad_b]


def _fused_forward(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], spec: LossSpec,
                   need_h: bool, need_w: bool, need_b: bool):
    """``((loss, nll, kl, n_correct, fp16_grad_clamped), [grad_h, grad_w, grad_b])``."""
    loop = _ProjectionLoop(hidden, weight, bias, spec, need_h, need_w, need_b)
    loss, nll, kl = loop.run()
    return (loss, nll, kl, loop.correct, loop.clamped), loop.stored_grads()


class _FusedLinearRDrop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, spec):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        values, grads = _fused_forward(hidden, weight, bias, spec, need_h, need_w, need_b)
        ctx.grads = grads
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(*(t for t in values[1:] if t is not None))
        return values

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
    ``fp16_grad_clamped``: with float16 inputs, how many entries of the logit
    gradient, stored times ``FP16_GRAD_SCALE``, were saturated at the float16
    maximum (None otherwise).
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
            loss, nll, kl, n_correct, clamped = _FusedLinearRDrop.apply(hidden2d, weight, bias, spec)
        else:
            (loss, nll, kl, n_correct, clamped), _ = _fused_forward(
                hidden2d, weight, bias, spec, False, False, False)
    return RDropLoss(loss, nll, kl, n_correct, fp16_grad_clamped=clamped)
