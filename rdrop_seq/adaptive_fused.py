"""R-Drop's loss for an adaptive softmax, chunked, gradients formed in the forward.

The same objective as the unfused path of ``rdrop_adaptive_loss`` (the
adaptive softmax's cross-entropy of every copy + alpha * the pair-mean
symmetric KL of :mod:`rdrop_seq.adaptive_kl`, sums over non-pad positions), in
the manner of :mod:`rdrop_seq.fused`: a chunk holds the same positions of every
copy, one float32 log-softmax per chunk serves the cross-entropy of all copies
and the KL, and the gradient is written out analytically and used at once.

``head`` mode (:func:`adaptive_head_rdrop_loss`) scores what the adaptive
softmax scores for the stacked target anyway: the head at every position, each
tail cluster where the target is in it.  Where the head's (a tail's) scores
are a plain projection of its input, its loss is
:func:`rdrop_seq.fused.fused_linear_rdrop_loss` (the scores never exist);
otherwise :func:`rdrop_seq.fused.chunked_rdrop_loss` from the scores, which
keeps no log-probabilities, only the gradient with respect to the scores.  No
label smoothing.

``full`` mode (:func:`adaptive_full_rdrop_loss`) needs every tail cluster at
every position.  It calls the head and tail modules on one chunk of positions
at a time, forms that chunk's full-vocabulary log-probabilities ``[m, c, V]``
(float32), takes their loss and gradient from the chunk core of
:mod:`rdrop_seq.fused`, carries the gradient back to the head's and the tails'
scores by the chain rule below, and from there through the modules with
``torch.autograd.grad`` to the chunk's inputs and the modules' parameters,
accumulated over chunks (float32).  Nothing of size ``[m*N, V]``, or of any
tail's size at every position, exists at any time; the backward only scales
the stored gradients.  Tied weights, quantisation noise and the dropout inside
the tails work as in the modules themselves (the tails' dropout masks are
drawn chunk by chunk).

Chain rule of the full log-probabilities ``L`` (cutoffs ``c_0 < ... < c_k``,
head scores ``h``, cluster ``i``'s scores ``t_i``)::

    L_w = h_w - lse(h)                                        w < c_0
    L_w = h_(c_0+i) - lse(h) + t_i,(w-c_i) - lse(t_i)         c_i <= w < c_(i+1)

For an incoming gradient ``G`` on ``L`` with row sum ``S`` and cluster sums
``S_i``: ``dh_w = G_w - softmax(h)_w S`` (head words), ``dh_(c_0+i) = S_i -
softmax(h)_(c_0+i) S`` and ``dt_i = G_(cluster i) - softmax(t_i) S_i``.  The
chunk core's ``G`` is the gradient through one more log-softmax of ``L``
(which is ``L`` itself, ``L`` being normalised): its extra term is a multiple
of ``exp(L)``, which the map from scores to ``L`` sends to zero, and its rows
sum to zero (those of the cross-entropy's ``p - onehot`` and of the KL's
gradient alike), so ``S = 0`` and its terms are left out.

No fairseq import here.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch.autograd.function import once_differentiable
from torch import Tensor, nn

from rdrop_seq.chunking import auto_chunk_size
from rdrop_seq.fused.kernel import LossSpec, Totals, chunk_core, consume_stored_grads, finish, scale_stored_grads
from rdrop_seq.fused.logits import chunked_rdrop_loss
from rdrop_seq.fused.precision import FP16_GRAD_SCALE, LOW_PRECISION
from rdrop_seq.fused.projection import fused_linear_rdrop_loss
from rdrop_seq.losses import RDropLoss, check_copies, compute_dtype

__all__ = ["adaptive_full_rdrop_loss", "adaptive_head_rdrop_loss"]


def adaptive_head_rdrop_loss(
    head: Union[Tensor, Tuple[Tensor, Union[Tensor, Sequence[Tensor]]]],
    tail_scores: Sequence[Union[None, Tensor, Tuple[Tensor, Tensor]]],
    head_target: Tensor,
    tail_targets: Sequence[Optional[Tensor]],
    *,
    alpha: float,
    passes: int,
    ignore_index: Optional[int],
    chunk_size: Optional[int] = None,
) -> RDropLoss:
    """The ``head``-mode objective from the adaptive softmax's own scores.

    ``head``: the head's scores ``[m*N, H]``, the ``m = passes`` copies
    copy-major, or a pair ``(hidden [m*N, d], weight [H, d])`` whose product
    ``hidden @ weight.T`` they are (then fused with the loss; ``weight`` may be
    a list of its row blocks, concatenated only while this loss is computed,
    as fairseq's tied head keeps its word and class weights apart); ``head_target``:
    ``[N]`` head classes (the word, or ``c_0 + i`` for a word of tail cluster
    ``i``; ``ignore_index`` at padding).  ``tail_scores[i]``: ``[m*K_i, V_i]``,
    cluster ``i``'s scores at the ``K_i`` positions whose target is in it,
    copy-major, or likewise a pair ``(input [m*K_i, d_i], weight [V_i, d_i])``
    (None if no position's target is in it); ``tail_targets[i]``: ``[K_i]``
    in-cluster indices.  Tail clusters hold no padding, so nothing is ignored
    there (a word whose in-cluster index equals the pad index counts).
    Returns the summed loss, NLL and KL (``n_correct`` None); gradients
    w.r.t. the scores (or the inputs and weights) are formed in this call (see
    :mod:`rdrop_seq.fused`).
    """
    if len(tail_scores) != len(tail_targets):
        raise ValueError("tail_scores and tail_targets must have one entry per cluster")
    common = dict(epsilon=0.0, alpha=alpha, passes=passes, chunk_size=chunk_size, report_accuracy=False)

    def cluster_loss(scores, target, ignore):
        if isinstance(scores, tuple):
            hidden, weight = scores
            if not torch.is_tensor(weight):  # row blocks: concatenated for this loss only
                weight = torch.cat(list(weight))
            return fused_linear_rdrop_loss(hidden, weight, target, ignore_index=ignore, **common)
        return chunked_rdrop_loss(scores, target, ignore_index=ignore, **common)

    out = cluster_loss(head, head_target, ignore_index)
    loss, nll, kl = out.loss, out.nll_loss, out.kl
    for i, (scores, target) in enumerate(zip(tail_scores, tail_targets)):
        if scores is None:
            if target is not None and target.numel() > 0:
                raise ValueError(f"tail {i} has targets but no scores")
            continue
        tail = cluster_loss(scores, target, None)
        loss, nll, kl = loss + tail.loss, nll + tail.nll_loss, kl + tail.kl
    return RDropLoss(loss, nll, kl, None)


# ---- full mode -----------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _FullSpec:
    """What :class:`_AdaptiveFullRDrop` needs besides its tensor inputs."""

    head: nn.Module
    tails: Sequence[nn.Module]
    cutoff: Sequence[int]
    loss: LossSpec  # target: [N] word ids; no label smoothing, no accuracy


def _grad_scale(dtype) -> float:
    """float16 gradients are handed to autograd scaled (see ``rdrop_seq.fused.precision.FP16_GRAD_SCALE``)."""
    return FP16_GRAD_SCALE if dtype == torch.float16 else 1.0


def _full_forward(spec: _FullSpec, x: Tensor, params: Sequence[Tensor], need_x: bool,
                  need_params: Sequence[bool]):
    m, target, ignore_index = spec.loss.passes, spec.loss.target, spec.loss.ignore_index
    n = target.numel()
    cutoff = list(spec.cutoff)
    c0, vocab = cutoff[0], cutoff[-1]
    k = len(cutoff) - 1
    device, dtype = x.device, x.dtype
    acc = compute_dtype(dtype)
    with_kl = spec.loss.with_kl
    need_grad = need_x or any(need_params)

    if ignore_index is None:
        positions = torch.arange(n, device=device)
    else:
        positions = target.ne(ignore_index).nonzero().squeeze(1)
    count = positions.numel()
    c = spec.loss.chunk_size or auto_chunk_size(
        vocab, x.size(-1), m, with_kl=with_kl, low_precision=dtype in LOW_PRECISION
    )
    c = max(1, min(int(c), max(count, 1)))

    lbuf = torch.empty(m * c * vocab, dtype=acc, device=device)  # log-probs, then gradient
    pbuf = torch.empty(m * c * vocab, dtype=acc, device=device) if with_kl else None  # probs
    mbuf = torch.empty(c * vocab, dtype=acc, device=device) if with_kl else None
    grad_x = torch.zeros(m * n, x.size(-1), dtype=acc, device=device) if need_x else None
    grad_p: List[Optional[Tensor]] = [None] * len(params)
    wanted = [p for p, need in zip(params, need_params) if need]
    offsets = (torch.arange(m, device=device) * n).view(m, 1)
    totals = Totals(device, accuracy=False)
    for start in range(0, count, c):
        cc = min(c, count - start)
        r = m * cc
        pos = positions[start:start + cc]
        rows = (offsets + pos.view(1, cc)).view(-1)
        xc = x.detach().index_select(0, rows)
        with torch.enable_grad() if need_grad else torch.no_grad():
            if need_x:
                xc.requires_grad_()
            h = spec.head(xc)
            ts = [tail(xc) for tail in spec.tails]
        if h.shape != (r, c0 + k):
            raise ValueError(f"head scores have shape {tuple(h.shape)}; cutoff {cutoff} needs {(r, c0 + k)}")
        # the full log-probabilities, written straight into the chunk core's buffer
        l3 = lbuf[: r * vocab].view(m, cc, vocab)
        z = l3.view(r, vocab)
        h_lsm = torch.log_softmax(h.detach(), -1, dtype=acc)
        z[:, :c0] = h_lsm[:, :c0]
        t_lsm = []
        for i, t in enumerate(ts):
            if t.shape != (r, cutoff[i + 1] - cutoff[i]):
                raise ValueError(f"tail {i} scores have shape {tuple(t.shape)}, expected "
                                 f"{(r, cutoff[i + 1] - cutoff[i])}")
            tl = torch.log_softmax(t.detach(), -1, dtype=acc)
            torch.add(tl, h_lsm[:, c0 + i : c0 + i + 1], out=z[:, cutoff[i] : cutoff[i + 1]])
            t_lsm.append(tl)
        totals.add(*chunk_core(
            l3, l3, pbuf[: r * vocab].view(m, cc, vocab) if with_kl else None,
            mbuf[: cc * vocab].view(cc, vocab) if with_kl else None,
            target.index_select(0, pos), None, 0.0, spec.loss.alpha, with_kl, need_grad, False,
        ))
        if not need_grad:
            continue
        g = l3.view(r, vocab)  # gradient w.r.t. L; its rows sum to zero (S = 0)
        g_h = torch.empty_like(h_lsm)
        g_h[:, :c0] = g[:, :c0]
        g_ts = []
        for i, tl in enumerate(t_lsm):
            g_i = g[:, cutoff[i] : cutoff[i + 1]]
            s_i = g_i.sum(-1, keepdim=True)
            g_h[:, c0 + i : c0 + i + 1] = s_i
            g_ts.append(tl.exp_().mul_(s_i.neg()).add_(g_i))  # G_i - softmax(t_i) S_i
        outs = [h] + ts
        # one scale for every output: an input's gradient sums the outputs' contributions
        scale = max(_grad_scale(o.dtype) for o in outs)
        grads_out = [(gg * scale).to(o.dtype) for gg, o in zip([g_h] + g_ts, outs)]
        inputs = ([xc] if need_x else []) + wanted
        got = torch.autograd.grad(outs, inputs, grads_out, allow_unused=True)
        # back to unscaled gradients in the accumulation dtype (None: the input got none)
        got = iter(None if g is None else g.to(acc) if scale == 1.0 else g.to(acc).div_(scale) for g in got)
        if need_x:
            grad_x.index_copy_(0, rows, next(got))
        for j, need in enumerate(need_params):
            gp = next(got) if need else None
            if gp is not None:
                grad_p[j] = gp if grad_p[j] is None else grad_p[j].add_(gp)
    if need_grad:
        # parameters no chunk reached (no non-pad position) get a zero gradient
        grad_p = [None if not need else (torch.zeros_like(p, dtype=acc) if g is None else g)
                  for p, need, g in zip(params, need_params, grad_p)]
    values = finish(totals.values, None, 0.0, spec.loss.alpha, vocab, acc)
    return values[:3], (grad_x, grad_p)


class _AdaptiveFullRDrop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, x, *params):
        need_x = ctx.needs_input_grad[1]
        need_params = list(ctx.needs_input_grad[2:])
        (loss, nll, kl), (grad_x, grad_p) = _full_forward(spec, x, params, need_x, need_params)
        ctx.grads = [grad_x] + grad_p
        ctx.dtypes = [x.dtype] + [p.dtype for p in params]
        ctx.mark_non_differentiable(nll, kl)
        return loss, nll, kl

    @staticmethod
    @once_differentiable  # the gradient was computed in the forward: no graph to differentiate again
    def backward(ctx, grad_loss, *unused):
        grads = consume_stored_grads(ctx, "adaptive R-Drop loss")
        return (None,) + tuple(scale_stored_grads(grads, ctx.dtypes, grad_loss))


def adaptive_full_rdrop_loss(
    x: Tensor,
    head: nn.Module,
    tails: Sequence[nn.Module],
    cutoff: Sequence[int],
    target: Tensor,
    *,
    alpha: float,
    passes: int,
    ignore_index: Optional[int],
    chunk_size: Optional[int] = None,
) -> RDropLoss:
    """The ``full``-mode objective: full-vocabulary cross-entropy and KL, chunked.

    ``x``: ``[m*N, d]``, the adaptive softmax's input (after its dropout), the
    ``m = passes`` copies copy-major; ``head``: the module giving ``[*, c_0 + k]``
    head scores; ``tails[i]``: the module giving cluster ``i``'s ``[*, V_i]``
    scores; ``cutoff``: ``[c_0, ..., V]``; ``target``: ``N`` word ids.
    ``chunk_size``: positions (of every copy) per chunk, by default
    :func:`rdrop_seq.fused.auto_chunk_size` of the whole vocabulary and ``d``.
    Same values as ``rdrop_cross_entropy_loss(adaptive_log_probs(...))``;
    gradients w.r.t. ``x`` and every parameter of ``head`` and ``tails`` that
    requires grad are computed during this call (the backward, which can run
    once, scales them by the incoming gradient).  ``n_correct`` is None.
    """
    cutoff = list(cutoff)
    if len(tails) != len(cutoff) - 1:
        raise ValueError(f"{len(tails)} tail modules for cutoff {cutoff}")
    x2d = x.reshape(-1, x.size(-1))
    target1d = target.reshape(-1)
    check_copies(x2d.size(0), target1d, passes, "x")
    loss = LossSpec(target1d, 0.0, float(alpha), int(passes), ignore_index, chunk_size, False)
    spec = _FullSpec(head, list(tails), cutoff, loss)
    params = []
    seen = set()
    for module in [head, *tails]:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    if torch.is_grad_enabled() and (x2d.requires_grad or params):
        loss, nll, kl = _AdaptiveFullRDrop.apply(spec, x2d, *params)
    else:
        (loss, nll, kl), _ = _full_forward(spec, x2d, params, False, [False] * len(params))
    return RDropLoss(loss, nll, kl, None)
