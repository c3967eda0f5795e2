"""How the dropout copies' distributions are compared: the divergences of ``--rdrop-divergence``.

Plain PyTorch (no fairseq import), with the conventions of :mod:`rdrop_seq.losses`:
the ``m`` copies stacked copy-major along the first dimension, sums over the
counted (non-pad) positions, and the arithmetic in :func:`compute_dtype` (float32,
or float64 for float64 inputs) whatever the input dtype.  :func:`pair_divergence`
is the mean over the ``m(m-1)/2`` copy pairs; the paper's symmetric KL runs in a
memory-lean autograd function that works chunk by chunk of positions.
"""

import math
from typing import Optional

import torch
from torch import Tensor

from rdrop_seq import chunking


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the softmaxes, divergences and sums for inputs of ``dtype``: float64 for
    float64, float32 for everything else (float32, bfloat16, float16)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# How the copies' distributions are compared (``--rdrop-divergence``), per copy pair:
#   sym-kl       1/2 (KL(P_i||P_j) + KL(P_j||P_i))                        (the paper)
#   js           1/2 KL(P_i||M) + 1/2 KL(P_j||M), M = (P_i + P_j) / 2   (Jensen-Shannon)
#   kl-detached  1/2 (KL(sg P_j||P_i) + KL(sg P_i||P_j)), sg = no gradient: each copy is
#                pulled towards the other's fixed distribution; the value is sym-kl's
DIVERGENCES = ("sym-kl", "js", "kl-detached")


def check_divergence(divergence: str) -> str:
    """``divergence`` as a plain string, or a ValueError naming the choices."""
    divergence = str(divergence)
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"--rdrop-divergence={divergence}: must be one of {', '.join(DIVERGENCES)}"
        )
    return divergence


def _pair_js(li: Tensor, lj: Tensor) -> Tensor:
    """Per row, the Jensen-Shannon divergence of two log-probability rows."""
    lm = torch.logaddexp(li, lj) - math.log(2.0)
    return 0.5 * (li.exp() * (li - lm)).sum(-1) + 0.5 * (lj.exp() * (lj - lm)).sum(-1)


def _pair_kl_detached(li: Tensor, lj: Tensor) -> Tensor:
    """Per row, ``1/2 (KL(sg P_j||P_i) + KL(sg P_i||P_j))``."""
    si, sj = li.detach(), lj.detach()
    return 0.5 * (sj.exp() * (sj - li)).sum(-1) + 0.5 * (si.exp() * (si - lj)).sum(-1)


_PAIR_TERMS = {"js": _pair_js, "kl-detached": _pair_kl_detached}


def copy_pairs(passes: int):
    """The ``m(m-1)/2`` pairs ``(i, j)``, ``i < j``, of ``passes`` copies."""
    return [(i, j) for i in range(passes) for j in range(i + 1, passes)]


def squared_disagreement(outputs: Tensor, passes: int) -> Tensor:
    """Regression's comparison of the copies: the sum over items of the pair-mean squared
    difference ``mean_{i<j} (y_i - y_j)^2`` of ``[m*N]`` outputs, copy-major, in
    :func:`compute_dtype`."""
    copies = outputs.reshape(passes, -1).to(compute_dtype(outputs.dtype))
    pairs = copy_pairs(passes)
    return sum(((copies[i] - copies[j]) ** 2).sum() for i, j in pairs) / len(pairs)


def pair_divergence(
    lprobs: Tensor,
    passes: int,
    mask: Optional[Tensor] = None,
    reduce: bool = True,
    divergence: str = "sym-kl",
) -> Tensor:
    """Mean over the ``m(m-1)/2`` copy pairs of the divergence ``D(P_i, P_j)``.

    ``lprobs``: ``[m*N, V]`` log-probabilities of the ``m = passes`` copies,
    stacked copy-major.  ``mask``: ``[N]`` bool, True at positions that count
    (non-pad); None counts every position.  Returns the sum over counted
    positions (``reduce``) or the ``[N]`` per-position values.  ``divergence``:
    one of :data:`DIVERGENCES`.

    ``sym-kl`` uses ``1/2 (KL(a||b) + KL(b||a)) = 1/2 sum_v (p_a - p_b) (l_a - l_b)``
    in a memory-lean autograd function; the others are plain expressions.  All
    are computed in float32 whatever the input dtype (float64 stays float64).
    """
    divergence = check_divergence(divergence)
    if passes < 2:
        raise ValueError(f"pair_divergence needs at least 2 copies, got passes={passes}")
    if lprobs.size(0) % passes != 0:
        raise ValueError(
            f"lprobs has {lprobs.size(0)} rows, not a multiple of passes={passes}"
        )
    lprobs = lprobs.to(compute_dtype(lprobs.dtype))
    copies = lprobs.view(passes, -1, lprobs.size(-1))
    if divergence == "sym-kl":
        per_position = _PairMeanSymmetricKL.apply(copies)
    else:
        term = _PAIR_TERMS[divergence]
        pairs = copy_pairs(passes)
        per_position = sum(term(copies[i], copies[j]) for i, j in pairs) / len(pairs)
    if mask is not None:
        per_position = per_position.masked_fill(~mask, 0.0)
    return per_position.sum() if reduce else per_position


def _kl_chunks(copies: Tensor):
    """Slices of positions of :func:`rdrop_seq.chunking.kl_chunk_positions` each."""
    passes, n, vocab = copies.shape
    step = chunking.kl_chunk_positions(passes, vocab)
    return [slice(start, start + step) for start in range(0, n, step)]


class _PairMeanSymmetricKL(torch.autograd.Function):
    """Per position, the pair mean of ``1/2 sum_v (p_i - p_j)(l_i - l_j)`` of ``[m, N, V]``
    log-probabilities ``l`` (``p = exp(l)``).

    Autograd through the plain expression would keep ``p`` and both differences
    (two ``[m*N, V]`` tensors' worth) until the backward, and make as many
    again there.  This keeps only ``l`` (the log-softmax that made it keeps it
    anyway) and works chunk by chunk of positions in both passes, so besides the
    gradient only one chunk's temporaries exist.  Gradient with respect to
    ``l_i`` of one pair's term: ``1/2 (p_i (l_i - l_j) + (p_i - p_j))``, and the
    negative of the same with ``p_j`` for ``l_j``.
    """

    @staticmethod
    def forward(ctx, copies):
        ctx.save_for_backward(copies)
        passes = copies.size(0)
        pairs = passes * (passes - 1) / 2
        out = copies.new_zeros(copies.size(1))
        for rows in _kl_chunks(copies):
            chunk = copies[:, rows]
            probs = chunk.exp()
            for i, j in copy_pairs(passes):
                out[rows] += 0.5 * ((probs[i] - probs[j]) * (chunk[i] - chunk[j])).sum(-1)
        return out / pairs

    @staticmethod
    def backward(ctx, grad_out):
        (copies,) = ctx.saved_tensors
        passes = copies.size(0)
        pairs = passes * (passes - 1) / 2
        grad = torch.zeros_like(copies)
        for rows in _kl_chunks(copies):
            chunk, into = copies[:, rows], grad[:, rows]
            probs = chunk.exp()
            scale = (grad_out[rows] * (0.5 / pairs)).unsqueeze(-1)
            for i, j in copy_pairs(passes):
                diff_l, diff_p = chunk[i] - chunk[j], probs[i] - probs[j]
                into[i] += scale * (probs[i] * diff_l + diff_p)
                into[j] -= scale * (probs[j] * diff_l + diff_p)
        return grad
