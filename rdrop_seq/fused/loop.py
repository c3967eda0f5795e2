"""The one chunk loop of every fused loss: positions -> chunks -> buffers -> chunk core -> gradients.

As Liger-Kernel's ``chunked_loss`` base: :class:`ChunkLoop` owns which positions are
computed, their chunks, the chunk's buffers, the chunk core
(:func:`~rdrop_seq.fused.kernel.chunk_core`), the running sums and the final values;
a path (:mod:`~rdrop_seq.fused.projection`, :mod:`~rdrop_seq.fused.logits`,
:mod:`~rdrop_seq.fused.adaptive`) subclasses it and supplies only

* :meth:`ChunkLoop.scores`: how a chunk's ``[m, c, V]`` scores are made, and
* :meth:`ChunkLoop.take_grad`: where the gradient w.r.t. them goes,

plus the gradients it stores for the backward (:meth:`ChunkLoop.stored_grads`).

A chunk holds the same positions of every copy.  Two ways to take them (:class:`Positions`):
pad positions *dropped* (only the counted positions, gathered; contiguous slices where
there is no padding), or *masked* (every position in contiguous slices, pads weighted 0
with a placeholder target, so that a path can write its gradient straight into slices of
an ``[m, N, V]`` tensor).
"""

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from rdrop_seq.fused.kernel import LossSpec, Workspace, chunk_core, finish


class Chunk(NamedTuple):
    """One chunk: ``size`` positions of every copy."""

    size: int  # c, positions
    target: Tensor  # [c] valid class indices
    keep: Optional[Tensor]  # [c] bool, where pads are masked (None: every position counts)
    span: Optional[slice]  # its positions, where they are contiguous
    rows: Optional[Tensor]  # [m*c] rows of the stacked [m*N, ...] inputs, where gathered


class Positions:
    """Which of the ``N`` target positions a loss computes, and how a chunk takes them.

    ``drop_padding``: only the non-pad positions (``count`` of them), gathered
    (contiguous slices where there is no padding); else every position in
    contiguous slices, pads masked (``keep``) with the placeholder target 0.
    ``pad_index``: the pad positions (None where there is no ``ignore_index`` or,
    dropping, no padding), whose gradient rows the path sets to zero.
    """

    def __init__(self, target: Tensor, ignore_index: Optional[int], passes: int, drop_padding: bool):
        self.passes, self.n = passes, target.numel()
        self.target, self.keep, self.index, self.pad_index = target, None, None, None
        if ignore_index is not None:
            pad = target.eq(ignore_index)
            if drop_padding:
                index = (~pad).nonzero().squeeze(1)
                if index.numel() < self.n:  # no padding: contiguous slices, no gathers
                    self.index, self.pad_index = index, pad.nonzero().squeeze(1)
            else:
                self.keep, self.target = ~pad, target.masked_fill(pad, 0)
                self.pad_index = pad.nonzero().squeeze(1)
        self.count = self.n if self.index is None else self.index.numel()
        if self.index is not None:
            self._offsets = (torch.arange(passes, device=target.device) * self.n).view(passes, 1)

    def chunks(self, size: int):
        """The chunks of ``size`` positions (the last may hold fewer)."""
        for start in range(0, self.count, size):
            c = min(size, self.count - start)
            if self.index is None:
                span = slice(start, start + c)
                keep = None if self.keep is None else self.keep[span]
                yield Chunk(c, self.target[span], keep, span, None)
            else:
                pos = self.index[start:start + c]
                rows = (self._offsets + pos.view(1, c)).view(-1)
                yield Chunk(c, self.target.index_select(0, pos), None, None, rows)

    def take(self, x: Tensor, chunk: Chunk) -> Tensor:
        """The chunk's ``[m*c, d]`` rows of the stacked ``[m*N, d]`` ``x``."""
        if chunk.rows is not None:
            return x.index_select(0, chunk.rows)
        return x.reshape(self.passes, self.n, -1)[:, chunk.span].reshape(self.passes * chunk.size, -1)

    def put(self, out: Tensor, chunk: Chunk, rows: Tensor) -> None:
        """Write the chunk's ``[m*c, d]`` ``rows`` into the stacked ``[m*N, d]`` ``out``."""
        if chunk.rows is not None:
            out.index_copy_(0, chunk.rows, rows.to(out.dtype))
        else:
            out.view(self.passes, self.n, -1)[:, chunk.span].copy_(rows.view(self.passes, chunk.size, -1))


class ChunkLoop:
    """The chunk loop; a path subclasses it with :meth:`scores` and :meth:`take_grad`.

    Holds the chunk's flat accumulation-dtype buffers (``logp``: log-probabilities,
    then the gradient; ``probs`` where the KL needs it or the path asks; ``scratch``
    with the KL), the running sums over chunks (float64 on the device: no host
    synchronisation) and, where ``count_clamped``, the number of float16 gradient
    entries saturated (:func:`~rdrop_seq.fused.precision.store_scaled`).
    """

    def __init__(self, spec: LossSpec, positions: Positions, vocab: int, default_chunk: int,
                 device, acc, need_grad: bool, *, logp_buffer: bool = True,
                 probs_buffer: Optional[bool] = None, count_clamped: bool = False):
        self.spec, self.positions, self.vocab, self.acc = spec, positions, vocab, acc
        self.need_grad = need_grad
        m = spec.passes
        c = spec.chunk_size or default_chunk
        self.chunk_size = c = max(1, min(int(c), max(positions.count, 1)))
        with_kl = spec.with_kl
        probs_buffer = with_kl if probs_buffer is None else probs_buffer
        self.probs_flat = torch.empty(m * c * vocab, dtype=acc, device=device) if probs_buffer else None
        self.logp_flat = torch.empty(m * c * vocab, dtype=acc, device=device) if logp_buffer else None
        self.scratch_flat = torch.empty(c * vocab, dtype=acc, device=device) if with_kl else None
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # nll, smooth, kl
        self.correct = torch.zeros((), dtype=torch.int64, device=device) if spec.accuracy else None
        self.clamped = torch.zeros((), dtype=torch.int64, device=device) if count_clamped else None

    # ---- what a path supplies -------------------------------------------------
    def scores(self, chunk: Chunk, ws: Workspace) -> Tensor:
        """The chunk's ``[m, c, V]`` scores (may be written into ``ws.probs``), or
        ``ws.logp`` holding its log-probabilities."""
        raise NotImplementedError

    def take_grad(self, chunk: Chunk, grad: Tensor) -> None:
        """Use ``grad``, ``[m, c, V]`` (accumulation dtype), the gradient w.r.t. the chunk's
        scores (pad rows not zeroed), before the next chunk overwrites it."""
        raise NotImplementedError

    def stored_grads(self) -> list:
        """The gradients formed over the chunks, for the backward (after :meth:`run`)."""
        raise NotImplementedError

    # ---- the loop ---------------------------------------------------------------
    def workspace(self, chunk: Chunk) -> Workspace:
        """Views of the buffers for a chunk of ``chunk.size`` positions."""
        m, c, vocab = self.spec.passes, chunk.size, self.vocab

        def view(flat, *shape):
            return None if flat is None else flat[: math.prod(shape)].view(*shape)

        return Workspace(view(self.logp_flat, m, c, vocab), view(self.probs_flat, m, c, vocab),
                         view(self.scratch_flat, c, vocab))

    def run(self):
        """Every chunk through the core; returns ``(loss, nll, kl)`` in the accumulation dtype."""
        for chunk in self.positions.chunks(self.chunk_size):
            ws = self.workspace(chunk)
            nll, smooth, kl, n_correct = chunk_core(
                self.scores(chunk, ws), ws, chunk.target, chunk.keep, self.spec, self.need_grad
            )
            self.sums[0] += nll
            self.sums[1] += smooth
            self.sums[2] += kl
            if self.correct is not None:
                self.correct += n_correct
            if self.need_grad:
                self.take_grad(chunk, ws.logp)
        return finish(self.sums, self.spec.epsilon, self.spec.alpha, self.vocab, self.acc)
