"""Float64 references written from the definitions, shared by the tests.

Nothing here is reused from the package: each quantity is spelled out from its
textbook definition, position by position, so that a mistake in the package's
vectorised math cannot be repeated here.
"""

import itertools

import torch


def smoothed_target(target, vocab, epsilon):
    """fairseq's smoothing: 1 - eps on the target, eps / (V - 1) on every other word."""
    q = torch.full((target.numel(), vocab), epsilon / (vocab - 1), dtype=torch.float64)
    q[torch.arange(target.numel()), target.reshape(-1)] = 1.0 - epsilon
    return q


def reference_rdrop_loss(logits, target, epsilon, alpha, passes, pad):
    """R-Drop objective from the definition, in float64.

    logits: [passes * N, V] (copy-major), target: [N].  Returns
    (loss, nll, kl) summed over non-pad positions; loss = sum_i CE_q(copy i)
    + alpha * sum_t mean_{i<j} 1/2 (KL(P_i||P_j) + KL(P_j||P_i)).
    """
    logits = logits.to(torch.float64)
    vocab = logits.size(-1)
    copies = logits.view(passes, -1, vocab)
    keep = target.reshape(-1).ne(pad).to(torch.float64)
    q = smoothed_target(target, vocab, epsilon)
    logp = [torch.log(torch.softmax(c, dim=-1)) for c in copies]
    probs = [torch.softmax(c, dim=-1) for c in copies]
    ce = sum(((-(q * lp).sum(-1)) * keep).sum() for lp in logp)
    nll = sum(
        ((-lp.gather(-1, target.reshape(-1, 1)).squeeze(-1)) * keep).sum() for lp in logp
    )
    pairs = list(itertools.combinations(range(passes), 2))
    kl = torch.zeros((), dtype=torch.float64)
    for i, j in pairs:
        kl_ij = (probs[i] * (logp[i] - logp[j])).sum(-1)
        kl_ji = (probs[j] * (logp[j] - logp[i])).sum(-1)
        kl = kl + ((0.5 * (kl_ij + kl_ji)) * keep).sum()
    kl = kl / len(pairs) if pairs else kl
    return ce + alpha * kl, nll, kl


def random_batch(passes, n, vocab, pad, pad_fraction=0.25, seed=0, scale=3.0):
    """Fresh random logits [passes*N, V] and targets [N] with some pad positions."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(passes * n, vocab, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, vocab, (n,), generator=g)
    target[target == pad] = (pad + 1) % vocab
    pads = torch.rand(n, generator=g) < pad_fraction
    target[pads] = pad
    target[-1] = pad  # always some padding, never only padding
    target[0] = (pad + 2) % vocab
    return logits, target
