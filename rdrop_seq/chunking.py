"""How many positions a chunk holds: the one chunk-size policy of every chunked loss.

The fused losses (:mod:`rdrop_seq.fused`, its adaptive softmax's included) and the
symmetric KL on log-probabilities (:mod:`rdrop_seq.divergences`).  No imports: it
sits at the bottom of the package's import graph.
"""

# Target size of a chunk's working set (its float32 [rows, V] buffers).
CHUNK_BUDGET_BYTES = 64 * 1024 * 1024
# The most a chunk's minimum number of rows may raise that working set to.
CHUNK_CEILING_BYTES = 4 * CHUNK_BUDGET_BYTES
# The least rows that minimum asks for (a product of so few rows is still efficient).
ROWS_MIN_FLOOR = 16
# The same for the logits fallback on CPUs: about a last-level cache, so that its
# elementwise passes over a chunk's buffers run from cache, not from memory.
CPU_LOGITS_CHUNK_BUDGET_BYTES = 8 * 1024 * 1024
CPU_LOGITS_MIN_POSITIONS = 8


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
    the low-precision scores when the inputs are bf16/fp16 -- the adaptive full
    mode's modules return theirs; the fused projection writes its own into the
    float32 buffers' storage, so for it this share is headroom) are kept around
    ``budget_bytes``; but a chunk has at least ``clamp(hidden_dim / 2,
    ROWS_MIN_FLOOR, 256)`` rows, so that its ``[rows, H] x [H, V]`` products
    stay efficient and re-reading the ``[V, H]`` weight once per chunk stays
    small against the chunk's own work (a narrow weight, such as an adaptive
    softmax tail's 64 columns, asks for few rows) -- up to
    ``CHUNK_CEILING_BYTES``: with a vocabulary of hundreds of thousands (an
    adaptive softmax's full KL) a row's own work is large, and the minimum
    would cost gigabytes.  Multiples of 8 positions from 16 on.
    """
    vocab = max(int(vocab), 1)
    per_position = _bytes_per_position(vocab, passes, with_kl, low_precision)
    rows_min = min(max(hidden_dim // 2, ROWS_MIN_FLOOR), 256)
    ceiling = max(budget_bytes, CHUNK_CEILING_BYTES) // per_position
    positions = max(budget_bytes // per_position, min(rows_min // passes, ceiling))
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


def kl_chunk_positions(passes: int, vocab: int, budget_bytes: int = None) -> int:
    """Positions per chunk of the symmetric KL on ``[m, N, V]`` log-probabilities
    (:mod:`rdrop_seq.divergences`): its float32 ``[m, rows, V]`` temporaries about
    ``budget_bytes`` (``CHUNK_BUDGET_BYTES`` by default), at least one position."""
    budget = CHUNK_BUDGET_BYTES if budget_bytes is None else budget_bytes
    return max(1, (budget // 4) // max(1, passes * vocab))
