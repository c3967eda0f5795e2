"""R-Drop's KL term for an adaptive softmax, in plain PyTorch (no fairseq import).

An adaptive softmax (Grave et al. 2017) with cutoffs ``c_0 < c_1 < ... < c_k = V``
scores the ``c_0`` most frequent words and one entry per tail cluster in a
*head* softmax, and the words ``c_i <= w < c_(i+1)`` of tail cluster ``i`` in
that cluster's own softmax::

    log p(w) = log head(w)                                   w <  c_0
    log p(w) = log head(c_0 + i) + log tail_i(w - c_i)       c_i <= w < c_(i+1)

Two ways to compare the ``m`` dropout copies (same conventions as
:mod:`rdrop_seq.losses`: copies stacked copy-major, sums over non-pad positions,
float32 whatever the input dtype):

``full``  the exact symmetric KL of the full-vocabulary distributions
          (:func:`adaptive_log_probs` then :func:`rdrop_seq.divergences.pair_divergence`);
          needs every tail at every position and ``[m*N, V]`` memory.
``head``  the symmetric KL of the head distributions at every position, plus
          the symmetric KL of the conditional distribution of the target's own
          tail cluster at the positions whose target is in a tail cluster
          (:func:`adaptive_head_kl`); needs the tails only where the
          cross-entropy needs them anyway.  By the chain rule,
          ``KL(P||Q) = KL(P_head||Q_head) + sum_i P(cluster i) KL(P_i||Q_i)``;
          ``head`` puts the target's cluster in place of that expectation.

Cluster membership is always decided on the original (unshifted) target word
id, never by comparing a shifted in-cluster index with the pad index, so a real
word whose in-cluster index equals the pad index counts like any other word.
"""

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rdrop_seq.divergences import compute_dtype, pair_divergence


def cluster_positions(target: Tensor, cutoff: Sequence[int]) -> List[Optional[Tensor]]:
    """For each tail cluster ``i``, the positions ``t`` with ``c_i <= target[t] < c_(i+1)``.

    ``target``: the original word ids (any shape; flattened).  ``cutoff``: the
    complete list ``[c_0, ..., V]``.  Entries are ascending position indices,
    or None for a cluster that no target falls in (the adaptive softmax then
    computes no tail for it).  Pad positions (pad id < ``c_0``) are never in a
    tail cluster.
    """
    target = target.reshape(-1)
    out: List[Optional[Tensor]] = []
    for i in range(len(cutoff) - 1):
        in_cluster = (target >= cutoff[i]) & (target < cutoff[i + 1])
        idx = in_cluster.nonzero(as_tuple=False).squeeze(1)
        out.append(idx if idx.numel() > 0 else None)
    return out


def adaptive_log_probs(
    head_logits: Tensor, tail_logits: Sequence[Tensor], cutoff: Sequence[int]
) -> Tensor:
    """Full-vocabulary log-probabilities ``[N, V]`` of an adaptive softmax.

    ``head_logits``: ``[N, c_0 + k]``; ``tail_logits[i]``: ``[N, c_(i+1) - c_i]``,
    cluster ``i``'s scores at *every* position; ``cutoff``: ``[c_0, ..., V]``.
    Computed in float32 (float64 for float64 input), differentiable, and equal to
    fairseq's ``AdaptiveSoftmax.get_log_prob`` for the same scores.
    """
    cutoff = list(cutoff)
    k = len(cutoff) - 1
    if head_logits.size(-1) != cutoff[0] + k:
        raise ValueError(
            f"head has {head_logits.size(-1)} scores; cutoff {cutoff} needs {cutoff[0] + k}"
        )
    if len(tail_logits) != k:
        raise ValueError(f"{len(tail_logits)} tail score tensors for {k} tail clusters")
    dtype = compute_dtype(head_logits.dtype)
    head_lp = F.log_softmax(head_logits.to(dtype), dim=-1)
    pieces = [head_lp[:, : cutoff[0]]]
    for i, tail in enumerate(tail_logits):
        if tail.shape != (head_logits.size(0), cutoff[i + 1] - cutoff[i]):
            raise ValueError(
                f"tail {i} scores have shape {tuple(tail.shape)}, expected "
                f"{(head_logits.size(0), cutoff[i + 1] - cutoff[i])}"
            )
        prior = head_lp[:, cutoff[0] + i].unsqueeze(-1)
        pieces.append(F.log_softmax(tail.to(dtype), dim=-1) + prior)
    return torch.cat(pieces, dim=-1)


def adaptive_head_kl(
    head_lprobs: Tensor,
    tail_lprobs: Sequence[Optional[Tensor]],
    tail_positions: Sequence[Optional[Tensor]],
    passes: int,
    mask: Optional[Tensor] = None,
    reduce: bool = True,
    divergence: str = "sym-kl",
) -> Tensor:
    """The ``head`` mode KL: head distributions plus the target cluster's conditional.

    ``head_lprobs``: ``[m*N, H]`` head log-probabilities of the ``m = passes``
    copies, copy-major.  ``tail_positions[i]``: ``[K_i]`` positions (in
    ``0..N-1``) whose target is in tail cluster ``i`` (None if none), as from
    :func:`cluster_positions` on the original batch's target;
    ``tail_lprobs[i]``: ``[m*K_i, V_i]`` cluster ``i``'s conditional
    log-probabilities at those positions, copy-major (what an adaptive softmax
    computes for the stacked target).  ``mask``: ``[N]`` bool, True at counted
    (non-pad) head positions.

    Per position ``t``: mean over copy pairs of the divergence of the heads
    (``divergence``, see :func:`rdrop_seq.divergences.pair_divergence`), plus, if
    ``t``'s target is in cluster ``i``, the same for cluster ``i``'s
    conditionals.  Returns the sum over positions (``reduce``) or ``[N]``.
    (The chain rule that motivates the sum holds for KL; for ``js`` the sum is
    the same construction, not the full-vocabulary Jensen-Shannon divergence.)
    """
    if len(tail_lprobs) != len(tail_positions):
        raise ValueError("tail_lprobs and tail_positions must have one entry per cluster")
    per_position = pair_divergence(head_lprobs, passes, mask, reduce=False, divergence=divergence)
    for i, (lprobs, positions) in enumerate(zip(tail_lprobs, tail_positions)):
        if positions is None or positions.numel() == 0:
            if lprobs is not None and lprobs.numel() > 0:
                raise ValueError(f"tail {i} has scores but no positions")
            continue
        if lprobs is None or lprobs.size(0) != passes * positions.numel():
            got = None if lprobs is None else lprobs.size(0)
            raise ValueError(
                f"tail {i}: {got} rows of scores for {positions.numel()} positions "
                f"x {passes} copies"
            )
        tail_kl = pair_divergence(lprobs, passes, None, reduce=False, divergence=divergence)
        per_position = per_position.index_add(0, positions, tail_kl.to(per_position.dtype))
    return per_position.sum() if reduce else per_position
