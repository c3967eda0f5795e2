"""Float64 references for the language-model losses, written from the definitions.

Nothing here is reused from the package: an adaptive softmax's distribution is
spelled out word by word (head probability of the word, or of its cluster times
the word's probability inside the cluster), and every KL position by position.
"""

import itertools

import torch

from tests.reference import reference_pair_divergence


def cluster_of(word, cutoff):
    """-1 for a head word, else the index of the tail cluster holding ``word``."""
    for i in range(len(cutoff) - 1):
        if cutoff[i] <= word < cutoff[i + 1]:
            return i
    assert word < cutoff[0], (word, cutoff)
    return -1


def softmax64(x):
    x = x.to(torch.float64)
    e = torch.exp(x - x.max())
    return e / e.sum()


def divergence_of(p, q, divergence="sym-kl"):
    """``--rdrop-divergence`` of two probability vectors (default 1/2 (KL(p||q) + KL(q||p)))."""
    return reference_pair_divergence(p.log(), q.log(), divergence)


def full_distribution(head_row, tail_rows, cutoff):
    """The adaptive softmax's distribution over all V words at one position.

    ``head_row``: ``[c_0 + k]`` scores; ``tail_rows[i]``: cluster ``i``'s
    ``[c_(i+1) - c_i]`` scores at this position.
    """
    head = softmax64(head_row)
    tails = [softmax64(row) for row in tail_rows]
    p = []
    for w in range(cutoff[-1]):
        i = cluster_of(w, cutoff)
        if i < 0:
            p.append(head[w])
        else:
            p.append(head[cutoff[0] + i] * tails[i][w - cutoff[i]])
    return torch.stack(p)


def reference_full_log_probs(head_logits, tail_logits, cutoff):
    """``[N, V]`` log-probabilities from head ``[N, H]`` and full tails ``[N, V_i]``."""
    rows = [
        full_distribution(head_logits[t], [tl[t] for tl in tail_logits], cutoff).log()
        for t in range(head_logits.size(0))
    ]
    return torch.stack(rows)


def reference_adaptive_full(head_logits, tail_logits, target, cutoff, alpha, passes, pad,
                            divergence="sym-kl"):
    """R-Drop objective with the ``full`` KL, in float64.

    ``head_logits``: ``[m*N, H]``; ``tail_logits[i]``: ``[m*N, V_i]`` (every
    position), copy-major; ``target``: ``[N]``.  Returns (loss, nll, kl) summed
    over non-pad positions.
    """
    n = target.numel()
    nll = torch.zeros((), dtype=torch.float64)
    kl = torch.zeros((), dtype=torch.float64)
    pairs = list(itertools.combinations(range(passes), 2))
    for t in range(n):
        y = int(target[t])
        if y == pad:
            continue
        dists = [
            full_distribution(
                head_logits[c * n + t], [tl[c * n + t] for tl in tail_logits], cutoff
            )
            for c in range(passes)
        ]
        for p in dists:
            nll = nll - p[y].log()
        if pairs:
            kl = kl + sum(divergence_of(dists[i], dists[j], divergence) for i, j in pairs) / len(pairs)
    return nll + alpha * kl, nll, kl


def reference_adaptive_head(head_logits, tail_logits, target, cutoff, alpha, passes, pad,
                            divergence="sym-kl"):
    """R-Drop objective with the ``head`` KL, in float64.

    ``head_logits``: ``[m*N, H]``, copy-major.  ``tail_logits[i]``: cluster
    ``i``'s scores only at the positions whose target is in cluster ``i``, in
    position order within each copy, copy-major (``[m*K_i, V_i]``), or None.
    Per non-pad position: NLL = -log head(word or its cluster) - log
    tail(word | cluster); KL = pair mean of the head's symmetric KL plus, for a
    tail word, of its cluster's conditional distributions.
    """
    n = target.numel()
    rows = {}  # (cluster, position) -> row index within one copy's block
    counts = [0] * (len(cutoff) - 1)
    for t in range(n):
        y = int(target[t])
        if y == pad:
            continue
        i = cluster_of(y, cutoff)
        if i >= 0:
            rows[(i, t)] = counts[i]
            counts[i] += 1
    nll = torch.zeros((), dtype=torch.float64)
    kl = torch.zeros((), dtype=torch.float64)
    pairs = list(itertools.combinations(range(passes), 2))
    for t in range(n):
        y = int(target[t])
        if y == pad:
            continue
        i = cluster_of(y, cutoff)
        heads = [softmax64(head_logits[c * n + t]) for c in range(passes)]
        tails = None
        if i >= 0:
            r = rows[(i, t)]
            tails = [softmax64(tail_logits[i][c * counts[i] + r]) for c in range(passes)]
        for c in range(passes):
            if i < 0:
                nll = nll - heads[c][y].log()
            else:
                nll = nll - heads[c][cutoff[0] + i].log() - tails[c][y - cutoff[i]].log()
        if pairs:
            pos = sum(divergence_of(heads[a], heads[b], divergence) for a, b in pairs)
            if tails is not None:
                pos = pos + sum(divergence_of(tails[a], tails[b], divergence) for a, b in pairs)
            kl = kl + pos / len(pairs)
    return nll + alpha * kl, nll, kl


def random_adaptive_batch(passes, n, cutoff, pad, seed=0, scale=3.0, collide=True):
    """Random scores and targets hitting the head and every tail cluster.

    Returns ``(head [m*N, H], full tails [m*N, V_i] list, target [N])``; some
    targets are pad, and with ``collide`` a word ``c_i + pad`` of every tail
    cluster (whose in-cluster index equals the pad index) is among them.
    """
    g = torch.Generator().manual_seed(seed)
    k = len(cutoff) - 1
    head = torch.randn(passes * n, cutoff[0] + k, generator=g, dtype=torch.float64) * scale
    tails = [
        torch.randn(passes * n, cutoff[i + 1] - cutoff[i], generator=g, dtype=torch.float64)
        * scale
        for i in range(k)
    ]
    target = torch.randint(0, cutoff[-1], (n,), generator=g)
    target[target == pad] = pad + 1
    slots = torch.randperm(n, generator=g).tolist()
    for i in range(k):  # at least one plain word of each cluster
        target[slots.pop()] = cutoff[i] + (pad + 2) % (cutoff[i + 1] - cutoff[i])
        if collide:
            target[slots.pop()] = cutoff[i] + pad
    target[slots.pop()] = pad + 2  # a head word
    target[slots.pop()] = pad
    target[slots.pop()] = pad
    return head, tails, target
