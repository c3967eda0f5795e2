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


def kl_rows(p, logp, logq):
    """Per row, KL(P||Q) = sum_v p_v (log p_v - log q_v)."""
    return (p * (logp - logq)).sum(-1)


def reference_pair_divergence(logp_i, logp_j, divergence="sym-kl"):
    """Per row, the divergence D(P_i, P_j) of two float64 log-probability rows.

    sym-kl:      1/2 (KL(P_i||P_j) + KL(P_j||P_i))
    js:          1/2 KL(P_i||M) + 1/2 KL(P_j||M) with M = (P_i + P_j) / 2
    kl-detached: 1/2 (KL(sg P_j||P_i) + KL(sg P_i||P_j)), sg = detached (no gradient)
    """
    p_i, p_j = torch.exp(logp_i), torch.exp(logp_j)
    if divergence == "sym-kl":
        return 0.5 * (kl_rows(p_i, logp_i, logp_j) + kl_rows(p_j, logp_j, logp_i))
    if divergence == "js":
        log_m = torch.log(0.5 * (p_i + p_j))
        return 0.5 * kl_rows(p_i, logp_i, log_m) + 0.5 * kl_rows(p_j, logp_j, log_m)
    if divergence == "kl-detached":
        fixed_i, fixed_j = logp_i.detach(), logp_j.detach()
        return 0.5 * (
            kl_rows(torch.exp(fixed_j), fixed_j, logp_i) + kl_rows(torch.exp(fixed_i), fixed_i, logp_j)
        )
    raise ValueError(divergence)


def reference_rdrop_loss(logits, target, epsilon, alpha, passes, pad, divergence="sym-kl"):
    """R-Drop objective from the definition, in float64.

    logits: [passes * N, V] (copy-major), target: [N].  Returns
    (loss, nll, kl) summed over non-pad positions; loss = sum_i CE_q(copy i)
    + alpha * sum_t mean_{i<j} D(P_i, P_j), D from :func:`reference_pair_divergence`
    (default: 1/2 (KL(P_i||P_j) + KL(P_j||P_i))).  ``pad=None``: no padding.
    """
    logits = logits.to(torch.float64)
    vocab = logits.size(-1)
    copies = logits.view(passes, -1, vocab)
    keep = torch.ones(target.numel(), dtype=torch.float64)
    if pad is not None:
        keep = target.reshape(-1).ne(pad).to(torch.float64)
    q = smoothed_target(target, vocab, epsilon)
    logp = [torch.log(torch.softmax(c, dim=-1)) for c in copies]
    ce = sum(((-(q * lp).sum(-1)) * keep).sum() for lp in logp)
    nll = sum(
        ((-lp.gather(-1, target.reshape(-1, 1)).squeeze(-1)) * keep).sum() for lp in logp
    )
    pairs = list(itertools.combinations(range(passes), 2))
    kl = torch.zeros((), dtype=torch.float64)
    for i, j in pairs:
        kl = kl + (reference_pair_divergence(logp[i], logp[j], divergence) * keep).sum()
    kl = kl / len(pairs) if pairs else kl
    return ce + alpha * kl, nll, kl


def reference_partial_rdrop_loss(copies_of, target, epsilon, alpha, pad):
    """Partial duplication (``--rdrop-fraction``) from the definition, in float64.

    ``copies_of[b]``: the logits ``[T, V]`` of each copy sentence ``b`` ran (one for a
    sentence run once, m for a duplicated one); ``target``: ``[B, T]``.  Returns
    (loss, nll, kl) with loss = sum_b sum_{copies c of b} CE_q(b, c) + alpha * kl and
    kl = sum_{duplicated b} sum_t mean_{i<j} D(P_i, P_j): each sentence's own R-Drop
    objective, without the divergence where it ran once.
    """
    loss = nll = kl = torch.zeros((), dtype=torch.float64)
    for copies, sentence_target in zip(copies_of, target):
        passes = len(copies)
        parts = reference_rdrop_loss(torch.cat(copies), sentence_target, epsilon,
                                     alpha if passes > 1 else 0.0, passes, pad)
        loss, nll, kl = loss + parts[0], nll + parts[1], kl + parts[2]
    return loss, nll, kl


def reference_unlabeled_divergence(logits, passes, divergence="sym-kl", confidence=0.0, temperature=1.0):
    """Semi-supervised R-Drop's unlabeled term from the definition, in float64.

    logits: [passes * U, C] (copy-major).  A sentence counts when the top class of the mean of
    its copies' distributions has probability > ``confidence`` (every one where it is 0); it
    contributes the pair mean of D(P_i, P_j), where with a ``temperature`` T != 1
    D = 1/2 (KL(Q_j||P_i) + KL(Q_i||P_j)), Q = P^(1/T) renormalised (no gradient), else
    :func:`reference_pair_divergence`.  Returns (the sum over counted sentences, their number).
    """
    copies = torch.softmax(logits.to(torch.float64).view(passes, -1, logits.size(-1)), dim=-1)
    logp = [torch.log(p) for p in copies]
    keep = torch.ones(copies.size(1), dtype=torch.bool)
    if confidence > 0:
        keep = copies.detach().mean(0).max(-1).values > confidence
    pairs = list(itertools.combinations(range(passes), 2))
    total = torch.zeros((), dtype=torch.float64)
    for i, j in pairs:
        if temperature != 1.0:
            q = [torch.softmax(lp.detach() / temperature, dim=-1) for lp in (logp[i], logp[j])]
            per = 0.5 * (kl_rows(q[1], torch.log(q[1]), logp[i]) + kl_rows(q[0], torch.log(q[0]), logp[j]))
        else:
            per = reference_pair_divergence(logp[i], logp[j], divergence)
        total = total + (per * keep).sum()
    return total / len(pairs), int(keep.sum())


def reference_regression_loss(outputs, target, alpha, passes):
    """R-Drop for regression from the definition, in float64, sentence by sentence.

    outputs: [passes * N] (copy-major), target: [N].  Returns (loss, squared
    error, disagreement): squared error = sum_i sum_n (y_in - t_n)^2,
    disagreement = sum_n mean_{i<j} (y_in - y_jn)^2, loss = error + alpha * disagreement.
    """
    y = outputs.to(torch.float64).reshape(passes, -1)
    t = target.to(torch.float64).reshape(-1)
    error = torch.zeros((), dtype=torch.float64)
    disagreement = torch.zeros((), dtype=torch.float64)
    pairs = list(itertools.combinations(range(passes), 2))
    for n in range(t.numel()):
        for i in range(passes):
            error = error + (y[i, n] - t[n]) ** 2
        if pairs:
            disagreement = disagreement + sum((y[i, n] - y[j, n]) ** 2 for i, j in pairs) / len(pairs)
    return error + alpha * disagreement, error, disagreement


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
