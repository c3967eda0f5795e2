"""The demos' statistics: summaries over seeds and the significance tests of each demo (sacrebleu's
paired bootstrap on BLEU and chrF, a paired block bootstrap on an LM's per-token log-probs, McNemar's
exact test on two classifiers).  Nothing here rounds: the callers round what they show.
"""

import math
import statistics

import numpy as np

from examples.common.base import RUNS

BLEU_TEST = "sacrebleu paired bootstrap resampling (paired-bs)"
MCNEMAR_TEST = "McNemar's exact test (two-sided binomial test on the discordant examples, scipy.stats.binomtest)"
LM_TEST = ("paired block bootstrap of the per-token log-prob difference "
           "(scipy.stats.bootstrap, paired=True; p-value as sacrebleu paired-bs)")


def mean_std(values):
    """``(mean, sample standard deviation)``; the std of one value is ``None`` (undefined, not 0)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise_seeds(per_seed, keys, runs=RUNS):
    """``{run: {"<key>_mean": m, "<key>_std": s, ...}}`` over the seeds of ``per_seed``
    (``{seed: {run: {key: value}}}``); a ``ValueError`` where a seed lacks a run or a run a key."""
    for seed, by_run in per_seed.items():
        for run in runs:
            missing = [k for k in keys if (by_run.get(run) or {}).get(k) is None]
            if missing:
                raise ValueError(f"seed {seed}: run {run!r} has no value for {', '.join(missing)}")
    out = {run: {} for run in runs}
    for run in runs:
        for key in keys:
            out[run][f"{key}_mean"], out[run][f"{key}_std"] = mean_std(r[run][key] for r in per_seed.values())
    return out


def seed_deltas(per_seed, keys, a, b):
    """``{key: {"mean": m, "std": s, "per_seed": {seed: b's value - a's}}}`` of runs ``a``, ``b``."""
    out = {}
    for key in keys:
        deltas = {seed: by_run[b][key] - by_run[a][key] for seed, by_run in per_seed.items()}
        mean, std = mean_std(deltas.values())
        out[key] = {"mean": mean, "std": std, "per_seed": deltas}
    return out


def paired_bleu_test(baseline_hyps, system_hyps, refs, n_samples=1000):
    """sacrebleu's paired bootstrap test (``sacrebleu --paired-bs``, default BLEU and chrF2, the
    baseline first): both systems' scores, the p-values, the test, its seed and BLEU's signature.

    sacrebleu's p-value, p = (#{d* - mean(d*) > |observed|} + 1) / (n_samples + 1) with d* the
    resampled |system - baseline|, is two-sided, and counts with a strict ``>``: identical
    systems get the smallest p, 1 / (n_samples + 1), so check that the scores differ before
    calling a difference significant.  sacrebleu seeds its generator with ``SACREBLEU_SEED``
    (12345 when unset; ``none`` leaves it unseeded), so the test is deterministic.
    """
    import sacrebleu
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    baseline_hyps, system_hyps, refs = list(baseline_hyps), list(system_hyps), list(refs)
    if not (len(baseline_hyps) == len(system_hyps) == len(refs)):
        raise ValueError(
            f"baseline ({len(baseline_hyps)}), system ({len(system_hyps)}) and references "
            f"({len(refs)}) must have the same number of segments")
    if not refs:
        raise ValueError("paired_bleu_test() needs at least one segment")
    metrics = {"BLEU": BLEU(references=[refs]), "CHRF": CHRF(references=[refs])}
    test = PairedTest([("baseline", baseline_hyps), ("system", system_hyps)], metrics,
                      references=None, test_type="bs", n_samples=n_samples)
    signatures, scores = test()
    bleu_name, chrf_name = [name for name in scores if name != "System"]  # "BLEU", "chrF2"
    (bl_bleu, sys_bleu), (bl_chrf, sys_chrf) = scores[bleu_name], scores[chrf_name]
    return {
        "p_value": float(sys_bleu.p_value),
        "p_value_chrf": float(sys_chrf.p_value),
        "baseline_bleu": float(bl_bleu.score),
        "system_bleu": float(sys_bleu.score),
        "baseline_chrf": float(bl_chrf.score),
        "system_chrf": float(sys_chrf.score),
        "test": BLEU_TEST,
        "resamples": test.n_samples,
        "seed": signatures[bleu_name].info.get("seed"),
        "signature": signatures[bleu_name].format(),
        "sacrebleu_version": sacrebleu.__version__,
    }


def _block_sums(logprobs, block):
    """Sums of consecutive blocks of ``block`` values (the last block may be shorter)."""
    starts = np.arange(0, len(logprobs), block)
    return np.add.reduceat(logprobs, starts), np.diff(np.append(starts, len(logprobs)))


def _logprob_diff(baseline_sums, system_sums, n_tokens, axis=-1):
    """Per-token mean log-prob of the system minus that of the baseline (> 0: system better)."""
    return (np.sum(system_sums, axis=axis) - np.sum(baseline_sums, axis=axis)) / np.sum(n_tokens, axis=axis)


def paired_bootstrap_lm(logprobs_baseline, logprobs_system, block=100, n_samples=1000,
                        seed=12345, base=math.e):
    """Paired block bootstrap test of two language models' log-probs of the same tokens (log base
    ``base``, fairseq's e by default).

    ``scipy.stats.bootstrap(paired=True)`` resamples blocks of ``block`` consecutive tokens (blocks
    keep some of the dependence between neighbouring tokens), the same for both models; the
    statistic is the per-token mean log-prob, system minus baseline.  The p-value is sacrebleu's
    (:func:`paired_bleu_test`) but for ties, which count (``>=``): identical inputs give p = 1.0.
    Returns the p-value, both perplexities, the observed difference and its 95% percentile
    interval, and the test's parameters.
    """
    from scipy.stats import bootstrap

    baseline = np.asarray(logprobs_baseline, dtype=np.float64)
    system = np.asarray(logprobs_system, dtype=np.float64)
    if baseline.ndim != 1 or baseline.shape != system.shape:
        raise ValueError(
            f"the baseline and the system must score the same tokens: {baseline.size} vs {system.size} log-probs")
    if not (np.all(np.isfinite(baseline)) and np.all(np.isfinite(system))):
        raise ValueError("log-probabilities must be finite")
    baseline_sums, n_tokens = _block_sums(baseline, block)
    system_sums, _ = _block_sums(system, block)
    if len(n_tokens) < 2:
        raise ValueError(f"{baseline.size} tokens make {len(n_tokens)} block(s) of {block}: "
                         "the bootstrap needs at least two blocks")

    observed = float(_logprob_diff(baseline_sums, system_sums, n_tokens))
    res = bootstrap((baseline_sums, system_sums, n_tokens), _logprob_diff, paired=True,
                    vectorized=True, n_resamples=n_samples, method="percentile",
                    confidence_level=0.95, rng=np.random.default_rng(seed))
    resampled = np.abs(res.bootstrap_distribution)
    null_shifted = resampled - resampled.mean()
    p_value = (int(np.sum(null_shifted >= abs(observed))) + 1) / (n_samples + 1)
    return {
        "p_value": p_value,
        "baseline_ppl": float(base ** -baseline.mean()),
        "system_ppl": float(base ** -system.mean()),
        "logprob_diff": observed,
        "ci95": [float(res.confidence_interval.low), float(res.confidence_interval.high)],
        "test": LM_TEST,
        "resamples": n_samples,
        "block": block,
        "n_blocks": len(n_tokens),
        "n_tokens": int(baseline.size),
        "seed": seed,
    }


def mcnemar_test(baseline_correct, system_correct):
    """McNemar's exact test of two classifiers' per-example correctness (bools, the same examples):
    only the discordant examples count, each either way with probability 1/2 under the null, so p is
    ``scipy.stats.binomtest``'s two-sided one (1.0 without discordant examples)."""
    from scipy.stats import binomtest

    baseline = np.asarray(baseline_correct, dtype=bool)
    system = np.asarray(system_correct, dtype=bool)
    if baseline.ndim != 1 or baseline.shape != system.shape:
        raise ValueError(f"both classifiers must be scored on the same examples: {baseline.size} vs {system.size}")
    if baseline.size == 0:
        raise ValueError("mcnemar_test() needs at least one example")
    b = int(np.sum(baseline & ~system))
    c = int(np.sum(system & ~baseline))
    p_value = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5).pvalue)
    return {
        "p_value": p_value,
        "baseline_only": b,
        "system_only": c,
        "both": int(np.sum(baseline & system)),
        "neither": int(np.sum(~baseline & ~system)),
        "n": int(baseline.size),
        "test": MCNEMAR_TEST,
        "resamples": None,
    }
