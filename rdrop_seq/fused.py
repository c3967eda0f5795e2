"""Memory-lean R-Drop loss: chunked over positions, gradients formed in the forward.

The stock way to train with R-Drop materialises, for the ``m`` dropout copies of
a batch of ``N`` target positions, the logits ``[m*N, V]``, their float32
log-probabilities ``[m*N, V]``, and in the backward as many gradient tensors of
that size again.  This module computes exactly the objective of
:func:`rdrop_seq.losses.rdrop_label_smoothed_loss`::

    sum_i LS-CE(copy i)  +  alpha * sum_t mean_{i<j} 1/2 (KL(P_i||P_j) + KL(P_j||P_i))

(fairseq's label smoothing, ``eps_i = epsilon / (V - 1)``, sums over non-pad
positions) chunk by chunk: a chunk holds the same positions of every copy, one
float32 log-softmax per chunk serves the cross-entropy of all copies and the
KL, and the gradient with respect to the chunk's logits is written out
analytically and used at once.  Two entry points:

* :func:`fused_linear_rdrop_loss` starts from the decoder's final hidden
  states and the output projection: the ``[m*N, V]`` logits never exist.  Each
  chunk's logit gradient is folded straight into float32 accumulators of the
  gradients of the hidden states, the weight and the bias; the backward only
  scales them by the incoming gradient.
* :func:`chunked_rdrop_loss` starts from logits (for output layers that are no
  plain projection) and keeps no float32 log-probabilities alive: its only
  ``[m*N, V]`` tensor besides the logits is their gradient, in their dtype.

Both also return the summed NLL (true perplexity), the summed KL and the number
of correct argmax predictions over non-pad positions of all copies, as
non-differentiable values equal to the unfused path's.

Gradients, per row with ``p = softmax(z)``, ``l = log p``, ``e = epsilon/(V-1)``:

* smoothed NLL: ``p * (1 - epsilon - e + e V) - (1 - epsilon - e) onehot - e``,
  where ``1 - epsilon - e + e V = 1`` exactly;
* ``1/2 (KL(a||b) + KL(b||a))`` w.r.t. ``z_a``:
  ``1/2 [p_a (l_a - l_b) - p_a KL(a||b) + p_a - p_b]``.  Summed over the
  partners ``b`` of ``a`` and divided by the ``m(m-1)/2`` pairs, with
  ``D_a = l_a - mean_b l_b`` and ``K_a = sum_v p_a D_a`` this is
  ``alpha/(m-1) * [p_a (D_a - K_a + 1) - mean_b p_b]``, and the per-position
  pair-mean symmetric KL is ``sum_a K_a / (m-1)``: all copies are handled with
  ``O(m)`` work per position, not one term per pair.

No fairseq import here; device-agnostic (CPU, CUDA), float32/float64 inputs
computed in their own precision, bfloat16/float16 inputs with float32
log-softmax, KL and accumulators.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from rdrop_seq.losses import RDropLoss, check_copies, compute_dtype, smoothing_share

__all__ = [
    "auto_chunk_size",
    "chunked_rdrop_loss",
    "logits_chunk_size",
    "fused_linear_rdrop_loss",
]

# Target size of a chunk's working set (its float32 [rows, V] buffers).
CHUNK_BUDGET_BYTES = 64 * 1024 * 1024
# The same for the logits fallback on CPUs: about a last-level cache, so that its
# elementwise passes over a chunk's buffers run from cache, not from memory.
CPU_LOGITS_CHUNK_BUDGET_BYTES = 8 * 1024 * 1024
CPU_LOGITS_MIN_POSITIONS = 8
# float16 gradients are stored / multiplied scaled by this power of two (and
# saturated at the float16 maximum), so that the small entries of an unscaled
# logit gradient neither underflow nor lose precision before the loss scale of
# mixed-precision training is applied in the backward.
FP16_GRAD_SCALE = 1024.0
_FP16_MAX = 65504.0
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def auto_chunk_size(
    vocab: int,
    hidden_dim: int,
    passes: int,
    *,
    with_kl: bool = True,
    low_precision: bool = False,
    budget_bytes: int = CHUNK_BUDGET_BYTES,
) -> int:
    """Positions per chunk (each chunk holds ``passes`` rows per position).

    The float32 ``[rows, V]`` buffers of a chunk (log-probabilities/gradient and
    probabilities of every copy, plus one per-position buffer for the KL, plus
    the low-precision logits when the inputs are bf16/fp16) are kept around
    ``budget_bytes``; but a chunk has at least ``clamp(hidden_dim / 2, 64, 512)``
    rows, so that its ``[rows, H] x [H, V]`` products stay efficient and
    re-reading the ``[V, H]`` weight once per chunk stays small against the
    chunk's own work.  Multiples of 8 positions from 16 on.
    """
    vocab = max(int(vocab), 1)
    per_position = _bytes_per_position(vocab, passes, with_kl, low_precision)
    rows_min = min(max(hidden_dim // 2, 64), 512)
    positions = max(budget_bytes // per_position, rows_min // passes)
    return _round_positions(max(positions, 1))


def logits_chunk_size(
    vocab: int,
    passes: int,
    device_type: str,
    *,
    with_kl: bool = True,
    low_precision: bool = False,
) -> int:
    """Positions per chunk of :func:`chunked_rdrop_loss` (no projection in the loop).

    On CPUs the chunk's buffers are kept to about ``CPU_LOGITS_CHUNK_BUDGET_BYTES``
    (at least ``CPU_LOGITS_MIN_POSITIONS`` positions): the loss makes some twenty
    elementwise passes over them, which then hit the cache instead of memory.
    Elsewhere (GPUs: fewer, larger kernels) the budget of :func:`auto_chunk_size`.
    """
    if device_type != "cpu":
        return auto_chunk_size(vocab, 0, passes, with_kl=with_kl, low_precision=low_precision)
    per_position = _bytes_per_position(max(int(vocab), 1), passes, with_kl, low_precision)
    positions = max(CPU_LOGITS_CHUNK_BUDGET_BYTES // per_position, CPU_LOGITS_MIN_POSITIONS)
    return _round_positions(positions)


def _round_positions(positions: int) -> int:
    """Multiples of 8 positions from 16 on."""
    return positions - positions % 8 if positions >= 16 else positions


def _bytes_per_position(vocab, passes, with_kl, low_precision):
    per_position = 4 * vocab * (2 * passes + (1 if with_kl and passes > 1 else 0))
    if low_precision:
        per_position += 2 * vocab * passes
    return per_position


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


# ---- low-precision matrix products -------------------------------------------
_MM_OUT_DTYPE_OK = {}


def _use_low_precision_gemm(device: torch.device) -> bool:
    """Whether bf16/fp16 gradient products run in the input dtype (CUDA) or float32."""
    return device.type == "cuda"


def _mm_float_out(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for bf16/fp16 ``a``, ``b`` with a float32 result (no rounding to the input dtype)."""
    key = (a.device.type, a.dtype)
    if _MM_OUT_DTYPE_OK.get(key, True) and a.device.type == "cuda":
        try:
            out = torch.mm(a, b, out_dtype=torch.float32)
            _MM_OUT_DTYPE_OK[key] = True
            return out
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_OUT_DTYPE_OK[key] = False
    return torch.mm(a.float(), b.float())


# ---- the per-chunk core ------------------------------------------------------
def _chunk_core(
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
    may alias ``pbuf``); ``lbuf``, ``pbuf``: ``[m, c, V]`` accumulation-dtype
    buffers (``pbuf`` only needed with the KL); ``mbuf``: ``[c, V]`` scratch
    (KL only); ``target``: ``[c]`` valid class indices; ``keep``: ``[c]`` bool,
    or None when every position counts.  On return ``lbuf`` holds the gradient
    (rows of pad positions not zeroed: the caller does it).  Returns the chunk's
    sums ``(nll, smooth, kl, n_correct)`` as 0-dim tensors (``n_correct`` None
    unless ``accuracy``), ``smooth`` being ``-sum_v log p_v``.
    """
    m, c, vocab = lbuf.shape
    acc = lbuf.dtype
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


def _finish(tot, tot_correct, epsilon, alpha, vocab, dtype):
    nll, smooth, kl = tot[0], tot[1], tot[2]
    e = smoothing_share(epsilon, vocab)
    loss = (1.0 - epsilon - e) * nll + e * smooth + alpha * kl
    return loss.to(dtype), nll.to(dtype), kl.to(dtype), tot_correct


class _Totals:
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


# ---- fused output projection + loss ------------------------------------------
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
    low = dtype in _LOW_PRECISION
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

    grad_h = grad_h3 = grad_w = grad_b = None
    if need_h:
        grad_h = torch.empty(m * n, hdim, dtype=acc, device=device)
        grad_h3 = grad_h.view(m, n, hdim)
        if count < n:
            grad_h3.index_fill_(1, pad.nonzero().squeeze(1), 0.0)
    if need_w:
        grad_w = torch.empty(vocab, hdim, dtype=acc, device=device)
        if count == 0:
            grad_w.zero_()
    if need_b:
        grad_b = torch.zeros(vocab, dtype=acc, device=device)

    pbuf = torch.empty(m * c * vocab, dtype=acc, device=device)
    lbuf = torch.empty(m * c * vocab, dtype=acc, device=device)
    mbuf = torch.empty(c * vocab, dtype=acc, device=device) if with_kl else None
    lowbuf = torch.empty(m * c * vocab, dtype=dtype, device=device) if low else None
    lowp_gemm = low and need_grad and _use_low_precision_gemm(device)
    weight_acc = weight.to(acc) if (need_h and low and not lowp_gemm) else None
    scale = FP16_GRAD_SCALE if dtype == torch.float16 else 1.0
    weight_t = weight.t()
    hidden3 = hidden.view(m, n, hdim)
    if positions is not None:
        offsets = (torch.arange(m, device=device) * n).view(m, 1)

    totals = _Totals(device, spec.accuracy)
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
        z = lowbuf[: r * vocab].view(r, vocab) if low else p2
        if bias is None:
            torch.mm(h, weight_t, out=z)
        else:
            torch.addmm(bias, h, weight_t, out=z)
        if low:
            p2.copy_(z)
        totals.add(*_chunk_core(
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
            g_low = lowbuf[: r * vocab].view(r, vocab)
            torch.mul(g, scale, out=g_low)
            if scale != 1.0:
                g_low.nan_to_num_(posinf=_FP16_MAX, neginf=-_FP16_MAX)
            gh = _mm_float_out(g_low, weight) if need_h else None
            if need_h and scale != 1.0:
                gh.mul_(1.0 / scale)
            if need_w:
                gw = _mm_float_out(g_low.t(), h)
                if start == 0:
                    torch.mul(gw, 1.0 / scale, out=grad_w)
                else:
                    grad_w.add_(gw, alpha=1.0 / scale)
        else:
            gh = torch.mm(g, weight if weight_acc is None else weight_acc) if need_h else None
            if need_w:
                h_acc = h if h.dtype == acc else h.to(acc)
                if start == 0:
                    torch.mm(g.t(), h_acc, out=grad_w)
                else:
                    grad_w.addmm_(g.t(), h_acc)
        if need_h:
            if positions is None:
                grad_h3[:, start:start + cc].copy_(gh.view(m, cc, hdim))
            else:
                grad_h.index_copy_(0, rows, gh)
    values = _finish(totals.values, totals.correct, spec.epsilon, spec.alpha, vocab, acc)
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
    def backward(ctx, grad_loss, *unused):
        out = scale_stored_grads(consume_stored_grads(ctx, "fused R-Drop loss"), ctx.dtypes, grad_loss)
        return out[0], out[1], out[2], None


def consume_stored_grads(ctx, what: str):
    """The gradients a forward stored in ``ctx.grads``, handed out once (the backward runs once)."""
    if ctx.grads is None:
        raise RuntimeError(
            f"{what}: backward called twice (its stored gradients are consumed by the first backward)"
        )
    grads, ctx.grads = ctx.grads, None
    return grads


def scale_stored_grads(grads, dtypes, grad_loss: Tensor):
    """Each stored gradient times the incoming one (in place), in its input's dtype (None stays None)."""
    return [None if g is None else g.mul_(grad_loss.to(g.dtype)).to(d) for g, d in zip(grads, dtypes)]


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


# ---- fallback from logits -----------------------------------------------------
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
        vocab, m, device.type, with_kl=with_kl, low_precision=dtype in _LOW_PRECISION
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

    totals = _Totals(device, spec.accuracy)
    for start in range(0, n, c):
        cc = min(c, n - start)
        sl = slice(start, start + cc)
        l3 = grad3[:, sl] if in_place else lbuf[: m * cc * vocab].view(m, cc, vocab)
        totals.add(*_chunk_core(
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
                    grad3[a, sl].nan_to_num_(posinf=_FP16_MAX, neginf=-_FP16_MAX)
                else:
                    grad3[a, sl].copy_(l3[a])
    if need_grad and pad is not None:
        grad3.index_fill_(1, pad.nonzero().squeeze(1), 0.0)
    values = _finish(totals.values, totals.correct, spec.epsilon, spec.alpha, vocab, acc)
    return values, grad, scale


class _ChunkedRDrop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, spec):
        values, grad, scale = _chunked_forward(logits, spec, ctx.needs_input_grad[0])
        ctx.grad, ctx.scale = grad, scale
        loss, nll, kl, n_correct = values
        ctx.mark_non_differentiable(*(t for t in (nll, kl, n_correct) if t is not None))
        return loss, nll, kl, n_correct

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        if ctx.grad is None:
            raise RuntimeError(
                "chunked R-Drop loss: backward called twice (its stored gradient is "
                "consumed by the first backward)"
            )
        grad, ctx.grad = ctx.grad, None
        if grad.dtype in _LOW_PRECISION:
            # a Python number is applied in float32 by the kernels, not rounded to fp16/bf16
            grad.mul_(float(grad_loss) / ctx.scale)
        else:
            grad.mul_(grad_loss.to(grad.dtype))
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
