"""Statistics for the demos' baseline-vs-R-Drop comparisons (no fairseq needed).

* :func:`mean_std`, :func:`summarise_seeds` and :func:`seed_deltas`: results over several seeds;
* :func:`paired_bleu_test`: sacrebleu's paired bootstrap test on BLEU and chrF;
* :func:`read_word_logprobs` and :func:`paired_bootstrap_lm`: a paired block
  bootstrap test on the per-token log-probabilities that
  ``fairseq-eval-lm --output-word-probs`` prints;
* :func:`mcnemar_test`: McNemar's exact test on two classifiers' predictions
  of the same examples.

The p-values of both tests follow sacrebleu's paired bootstrap definition
(two-sided, null-shifted, +1 smoothing); see :func:`paired_bleu_test` and
:func:`paired_bootstrap_lm` for the one place where the LM test differs.
Nothing here rounds: the callers round what they show.
"""

import math
import re
import statistics

import numpy as np

from examples.common.base import RUNS

BLEU_TEST = "sacrebleu paired bootstrap resampling (paired-bs)"
MCNEMAR_TEST = "McNemar's exact test (two-sided binomial test on the discordant examples, scipy.stats.binomtest)"
LM_TEST = ("paired block bootstrap of the per-token log-prob difference "
           "(scipy.stats.bootstrap, paired=True; p-value as sacrebleu paired-bs)")

# one line of fairseq's eval_lm logger ("%(asctime)s | %(levelname)s | %(name)s | %(message)s")
# fairseq's own format where it sets up logging, Python's default ("INFO:fairseq_cli.eval_lm:...")
# where logging was configured before (as when fairseq-eval-lm runs with --user-dir)
_EVAL_LM_LINE = re.compile(r"(?:\|\s*fairseq_cli\.eval_lm\s*\|\s|^[A-Z]+:fairseq_cli\.eval_lm:)(.*)$")
# a --output-word-probs message: "<sample id> <word> [<log-prob>]\t<word> [<log-prob>]..."
_WORD_PROBS_MESSAGE = re.compile(r"(\d+) (.* \[[^\[\]]*\])")
_WORD_PROB = re.compile(r"(.*) \[([^\[\]]*)\]")


def mean_std(values):
    """``(mean, sample standard deviation)`` of ``values`` (ddof=1).

    The standard deviation of a single value is ``None`` (undefined, not 0).
    Raises ``ValueError`` on an empty sequence.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std() needs at least one value")
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def summarise_seeds(per_seed, keys, runs=RUNS):
    """Mean and std over seeds of each numeric key, per run of ``runs``, and the per-seed deltas
    of the second run against the first.

    ``per_seed`` is ``{seed: {"baseline": {key: value, ...}, "rdrop": {...}}}``.
    Returns ``{"baseline": {"<key>_mean": m, "<key>_std": s, ...}, "rdrop": {...},
    "deltas": {key: {"mean": m, "std": s, "per_seed": {seed: rdrop - baseline}}}}``,
    the std being ``None`` for a single seed (see :func:`mean_std`).  Raises
    ``ValueError`` when a seed lacks a run or a run lacks one of ``keys``.
    """
    if not per_seed:
        raise ValueError("summarise_seeds() needs results of at least one seed")
    for seed, by_run in per_seed.items():
        for run in runs:
            missing = [k for k in keys if (by_run.get(run) or {}).get(k) is None]
            if missing:
                raise ValueError(f"seed {seed}: run {run!r} has no value for {', '.join(missing)}")
    out = {run: {} for run in runs}
    for run in runs:
        for key in keys:
            mean, std = mean_std(by_run[run][key] for by_run in per_seed.values())
            out[run][f"{key}_mean"] = mean
            out[run][f"{key}_std"] = std
    out["deltas"] = seed_deltas(per_seed, keys, runs[0], runs[1])
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
    """sacrebleu's paired bootstrap test (``sacrebleu --paired-bs``) of BLEU and chrF.

    Runs ``sacrebleu.significance.PairedTest`` with ``test_type="bs"``, the
    baseline first, default BLEU (13a) and chrF2 settings, one reference
    stream.  Returns ``p_value`` (BLEU), ``p_value_chrf``, ``baseline_bleu``,
    ``system_bleu``, ``baseline_chrf``, ``system_chrf``, ``test``,
    ``resamples``, ``seed``, ``signature`` (BLEU's) and ``sacrebleu_version``.

    The p-value, as sacrebleu defines it: resample the sentences ``n_samples``
    times (the same indices for both systems); ``d*`` = |system - baseline| on
    each resample; p = (#{d* - mean(d*) > |observed difference|} + 1) /
    (n_samples + 1).  It is two-sided: the sign of the score difference says
    which system is better.  Two systems with identical per-sentence
    statistics (e.g. identical output) get p = 1 / (n_samples + 1), the
    smallest value, because sacrebleu counts with a strict ``>``: check that
    the scores differ before calling a difference significant.

    Deterministic: sacrebleu seeds ``numpy.random.default_rng`` with the
    environment variable ``SACREBLEU_SEED``, 12345 when it is unset (the seed is
    returned); ``SACREBLEU_SEED=none`` (and, in sacrebleu 2.x, ``0``) leaves the
    generator unseeded.
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


def read_word_logprobs(text):
    """The per-token log-probabilities in ``fairseq-eval-lm --output-word-probs`` output.

    fairseq 0.12 logs one line per sample, through the ``fairseq_cli.eval_lm``
    logger: ``<time> | INFO | fairseq_cli.eval_lm | <sample id> <word> [<lp>]\\t<word> [<lp>]...``
    with ``<lp>`` formatted ``{:2f}`` (six decimals).  The values are returned
    sample by sample, word by word, in the order printed (the order of
    fairseq's batches, so compare only runs with the same data and batching
    options).  Other lines are ignored.

    What fairseq prints: natural-log probabilities (base e: the model's
    ``log_softmax``; only the summary "Loss (base 2)" is converted to base 2),
    one per target token including the end-of-sentence ``</s>`` and excluding
    a removed beginning-of-sentence token.  With ``--post-process``
    (``--remove-bpe``) ``@@ `` continuation tokens are not printed: their
    log-probs are added into the token that ends the word, so each value is a
    whole word's log-prob, as counted in fairseq's perplexity.  Tokens with an
    infinite log-prob are dropped by fairseq from its totals, which shifts (or
    aborts) its printed word list; that cannot be recognised here.

    Raises ``ValueError`` when the text holds no word probabilities or when a
    word-probability line holds a malformed or non-finite value.
    """
    logprobs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        logged = _EVAL_LM_LINE.search(line)
        message = _WORD_PROBS_MESSAGE.fullmatch(logged.group(1).rstrip()) if logged else None
        if not message:
            continue
        for field in message.group(2).split("\t"):
            m = _WORD_PROB.fullmatch(field)
            try:
                value = float(m.group(2)) if m else math.nan
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"line {lineno}: no finite log-probability in word entry {field!r}")
            logprobs.append(value)
    if not logprobs:
        raise ValueError(
            "no word probabilities found: expected lines of 'fairseq-eval-lm --output-word-probs' "
            "('... | fairseq_cli.eval_lm | <sample id> <word> [<log-prob>]\\t...')")
    return logprobs


def _block_sums(logprobs, block):
    """Sums of consecutive blocks of ``block`` values (the last block may be shorter)."""
    starts = np.arange(0, len(logprobs), block)
    return np.add.reduceat(logprobs, starts), np.diff(np.append(starts, len(logprobs)))


def _logprob_diff(baseline_sums, system_sums, n_tokens, axis=-1):
    """Per-token mean log-prob of the system minus that of the baseline (> 0: system better)."""
    return (np.sum(system_sums, axis=axis) - np.sum(baseline_sums, axis=axis)) / np.sum(n_tokens, axis=axis)


def paired_bootstrap_lm(logprobs_baseline, logprobs_system, block=100, n_samples=1000,
                        seed=12345, base=math.e):
    """Paired block bootstrap test of two language models' per-token log-probs.

    Both lists score the same tokens in the same order, in log base ``base``
    (default e, what fairseq prints: see :func:`read_word_logprobs`).  The
    tokens are cut into consecutive blocks of ``block`` tokens (the last one
    may be shorter; blocks keep some of the dependence between neighbouring
    tokens) and ``scipy.stats.bootstrap(paired=True)`` resamples the blocks
    with replacement, the same blocks for both models, ``n_samples`` times
    (generator ``numpy.random.default_rng(seed)``).  The statistic is the
    difference of the per-token mean log-probs, system minus baseline, over
    the resampled blocks (total log-prob over total tokens).

    The p-value mirrors sacrebleu's paired bootstrap (see
    :func:`paired_bleu_test`): ``d*`` = |statistic| on each resample;
    p = (#{d* - mean(d*) >= |observed difference|} + 1) / (n_samples + 1);
    two-sided.  One difference: ties count (``>=`` where sacrebleu has ``>``),
    so identical inputs give p = 1.0, not sacrebleu's 1 / (n_samples + 1).

    Returns ``p_value``, ``baseline_ppl`` and ``system_ppl`` (``base ** -mean
    log-prob``), ``logprob_diff`` (the observed statistic), ``ci95`` (its 95%
    percentile interval over the resamples), ``test``, ``resamples``,
    ``block``, ``n_blocks``, ``n_tokens`` and ``seed``.  Raises ``ValueError``
    when the lists differ in length, hold a non-finite value or make fewer
    than two blocks.
    """
    from scipy.stats import bootstrap

    baseline = np.asarray(logprobs_baseline, dtype=np.float64)
    system = np.asarray(logprobs_system, dtype=np.float64)
    if baseline.ndim != 1 or baseline.shape != system.shape:
        raise ValueError(
            f"the baseline and the system must score the same tokens: {baseline.size} vs {system.size} log-probs")
    if not (np.all(np.isfinite(baseline)) and np.all(np.isfinite(system))):
        raise ValueError("log-probabilities must be finite")
    if int(block) != block or block < 1:
        raise ValueError(f"block must be a positive integer, not {block!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be positive, not {n_samples!r}")
    if not base > 1:
        raise ValueError(f"base must be greater than 1, not {base!r}")
    block = int(block)
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
    """McNemar's exact test: do two classifiers err on the same examples equally often?

    ``baseline_correct`` and ``system_correct``: one bool per example (the same
    examples, in the same order), whether each classifier got it right.  Only
    the discordant examples count: ``b`` that only the baseline got right, ``c``
    that only the system got right; under the null hypothesis each discordant
    example is either with probability 1/2, and the p-value is
    ``scipy.stats.binomtest(c, b + c, 0.5)``'s two-sided one (1.0 when there is
    no discordant example).  Returns ``p_value``, ``baseline_only``,
    ``system_only``, ``both``, ``neither``, ``n``, ``test`` and ``resamples``
    (``None``: the test is exact).  Raises ``ValueError`` for lists of
    different lengths or empty ones.
    """
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
