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

Modules (chunk sizes: :mod:`rdrop_seq.chunking`):
:mod:`~rdrop_seq.fused.kernel` (the per-chunk core: values and gradient of a chunk),
:mod:`~rdrop_seq.fused.loop` (the one chunk loop: positions, chunks, buffers, sums),
:mod:`~rdrop_seq.fused.precision` (half-precision inputs, the float16 gradient scale),
:mod:`~rdrop_seq.fused.stored_grads` (the gradients' hand-over to the backward), and the
paths, each a :class:`~rdrop_seq.fused.loop.ChunkLoop` with its autograd function:
:mod:`~rdrop_seq.fused.projection` and :mod:`~rdrop_seq.fused.logits` (the two entry
points above) and :mod:`~rdrop_seq.fused.adaptive` (the adaptive softmax's loss).
"""

from rdrop_seq.chunking import auto_chunk_size, logits_chunk_size
from rdrop_seq.fused.logits import chunked_rdrop_loss
from rdrop_seq.fused.projection import fused_linear_rdrop_loss

__all__ = [
    "auto_chunk_size",
    "chunked_rdrop_loss",
    "logits_chunk_size",
    "fused_linear_rdrop_loss",
]
