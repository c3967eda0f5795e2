"""R-Drop's loss for an adaptive softmax, chunked, gradients formed in the forward.

The same objective as the unfused path of ``rdrop_adaptive_loss`` (the
adaptive softmax's cross-entropy of every copy + alpha * the pair-mean
symmetric KL of :mod:`rdrop_seq.adaptive_kl`, sums over non-pad positions), in
the manner of :mod:`rdrop_seq.fused` (its chunk loop, :mod:`rdrop_seq.fused.loop`): a chunk holds the same positions of every
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
from rdrop_seq.fused.kernel import LossSpec
from rdrop_seq.fused.logits import chunked_rdrop_loss
from rdrop_seq.fused.loop import ChunkLoop, Positions
from rdrop_seq.fused.precision import LOW_PRECISION, grad_scale, store_scaled
from rdrop_seq.fused.projection import fused_linear_rdrop_loss
from rdrop_seq.fused.stored_grads import consume_stored_grads, scale_stored_grads
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
    Returns the summed loss, NLL and KL (``n_correct`` None; ``fp16_grad_clamped`` summed over
    the clusters' losses); gradients
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
    loss, nll, kl, clamped = out.loss, out.nll_loss, out.kl, out.fp16_grad_clamped
    for i, (scores, target) in enumerate(zip(tail_scores, tail_targets)):
        if scores is None:
            if target is not None and target.numel() > 0:
                raise ValueError(f"tail {i} has targets but no scores")
            continue
        tail = cluster_loss(scores, target, None)
        loss, nll, kl = loss + tail.loss, nll + tail.nll_loss, kl + tail.kl
        if tail.fp16_grad_clamped is not None:
            clamped = tail.fp16_grad_clamped if clamped is None else clamped + tail.fp16_grad_clamped
    return RDropLoss(loss, nll, kl, None, fp16_grad_clamped=clamped)


# ---- full mode -----------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _FullSpec:
    """What :class:`_AdaptiveFullRDrop` needs besides its tensor inputs."""

    head: nn.Module
    tails: Sequence[nn.Module]
    cutoff: Sequence[int]
    loss: LossSpec  # target: [N] word ids; no label smoothing, no accuracy


def _counts_fp16(x: Tensor, params: Sequence[Tensor]) -> bool:
    """Whether the modules' scores may be float16 (then their gradients are stored scaled)."""
    device_type = x.device.type
    autocast_fp16 = (torch.is_autocast_enabled(device_type)
                     and torch.get_autocast_dtype(device_type) == torch.float16)
    return autocast_fp16 or any(t.dtype == torch.float16 for t in [x, *params])


class _FullLoop(ChunkLoop):
    """Scores: the chunk's full log-probabilities ``L`` (pad positions dropped), from the
    head's and the tails' modules on the chunk's rows of ``x``, written straight into the
    chunk core's buffer; gradient: by the chain rule of the module docstring to the head's
    and the tails' scores, then through the modules (``torch.autograd.grad``) into the
    chunk's rows of grad(x) and, summed over chunks, the parameters' gradients."""

    def __init__(self, spec: _FullSpec, x: Tensor, params: Sequence[Tensor], need_x: bool,
                 need_params: Sequence[bool]):
        loss = spec.loss
        m, n = loss.passes, loss.target.numel()
        self.cutoff = cutoff = list(spec.cutoff)
        vocab = cutoff[-1]
        device, dtype = x.device, x.dtype
        acc = compute_dtype(dtype)
        need_grad = need_x or any(need_params)
        positions = Positions(loss.target, loss.ignore_index, m, drop_padding=True)
        default = auto_chunk_size(vocab, x.size(-1), m, with_kl=loss.with_kl,
                                  low_precision=dtype in LOW_PRECISION)
        super().__init__(loss, positions, vocab, default, device, acc, need_grad,
                         count_clamped=_counts_fp16(x, params))
        self.modules, self.x, self.params = spec, x.detach(), params
        self.need_x, self.need_params = need_x, list(need_params)
        self.grad_x = torch.zeros(m * n, x.size(-1), dtype=acc, device=device) if need_x else None
        self.grad_p: List[Optional[Tensor]] = [None] * len(params)
        self.wanted = [p for p, need in zip(params, need_params) if need]
        self.chunk_state = None  # the current chunk's input, scores and their log-softmaxes

    def scores(self, chunk, ws):
        cutoff, c0, vocab = self.cutoff, self.cutoff[0], self.vocab
        k, r = len(cutoff) - 1, self.spec.passes * chunk.size
        xc = self.positions.take(self.x, chunk)
        with torch.enable_grad() if self.need_grad else torch.no_grad():
            if self.need_x:
                xc.requires_grad_()
            h = self.modules.head(xc)
            ts = [tail(xc) for tail in self.modules.tails]
        if h.shape != (r, c0 + k):
            raise ValueError(f"head scores have shape {tuple(h.shape)}; cutoff {cutoff} needs {(r, c0 + k)}")
        # the full log-probabilities, written straight into the chunk core's buffer
        z = ws.logp.view(r, vocab)
        h_lsm = torch.log_softmax(h.detach(), -1, dtype=self.acc)
        z[:, :c0] = h_lsm[:, :c0]
        t_lsm = []
        for i, t in enumerate(ts):
            if t.shape != (r, cutoff[i + 1] - cutoff[i]):
                raise ValueError(f"tail {i} scores have shape {tuple(t.shape)}, expected "
                                 f"{(r, cutoff[i + 1] - cutoff[i])}")
            tl = torch.log_softmax(t.detach(), -1, dtype=self.acc)
            torch.add(tl, h_lsm[:, c0 + i : c0 + i + 1], out=z[:, cutoff[i] : cutoff[i + 1]])
            t_lsm.append(tl)
        self.chunk_state = (xc, h, ts, h_lsm, t_lsm)
        return ws.logp

    def take_grad(self, chunk, grad):
        (xc, h, ts, h_lsm, t_lsm), cutoff, c0 = self.chunk_state, self.cutoff, self.cutoff[0]
        g = grad.view(-1, self.vocab)  # gradient w.r.t. L; its rows sum to zero (S = 0)
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
        scale = max(grad_scale(o.dtype) for o in outs)
        grads_out = [store_scaled(gg, torch.empty(gg.shape, dtype=o.dtype, device=gg.device), scale,
                                  self.clamped) for gg, o in zip([g_h] + g_ts, outs)]
        inputs = ([xc] if self.need_x else []) + self.wanted
        got = torch.autograd.grad(outs, inputs, grads_out, allow_unused=True)
        # back to unscaled gradients in the accumulation dtype (None: the input got none)
        acc = self.acc
        got = iter(None if g is None else g.to(acc) if scale == 1.0 else g.to(acc).div_(scale) for g in got)
        if self.need_x:
            self.positions.put(self.grad_x, chunk, next(got))
        for j, need in enumerate(self.need_params):
            gp = next(got) if need else None
            if gp is not None:
                self.grad_p[j] = gp if self.grad_p[j] is None else self.grad_p[j].add_(gp)

    def stored_grads(self):
        # parameters no chunk reached (no non-pad position) get a zero gradient
        grad_p = [None if not need else (torch.zeros_like(p, dtype=self.acc) if g is None else g)
                  for p, need, g in zip(self.params, self.need_params, self.grad_p)]
        return [self.grad_x] + grad_p


class _AdaptiveFullRDrop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, x, *params):
        loop = _FullLoop(spec, x, params, ctx.needs_input_grad[1], list(ctx.needs_input_grad[2:]))
        loss, nll, kl = loop.run()
        ctx.grads = loop.stored_grads()
        ctx.dtypes = [x.dtype] + [p.dtype for p in params]
        ctx.mark_non_differentiable(*(t for t in (nll, kl, loop.clamped) if t is not None))
        return loss, nll, kl, loop.clamped

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
    once, scales them by the incoming gradient).  ``n_correct`` is None;
    ``fp16_grad_clamped``: where the scores may be float16, the entries of their gradients
    saturated at the float16 maximum (None otherwise).
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
        loss, nll, kl, clamped = _AdaptiveFullRDrop.apply(spec, x2d, *params)
    else:
        loop = _FullLoop(spec, x2d, params, False, [False] * len(params))
        (loss, nll, kl), clamped = loop.run(), loop.clamped
    return RDropLoss(loss, nll, kl, None, fp16_grad_clamped=clamped)
