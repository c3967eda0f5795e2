"""The demos' statistics: seed summaries, sacrebleu's paired test, the LM block bootstrap."""

import logging
import math

import numpy as np
import pytest

from examples.common import stats as demo_stats
from examples.common.stats import mean_std, paired_bleu_test, paired_bootstrap_lm, seed_deltas, summarise_seeds
from examples.language_model.eval_lm import read_word_logprobs


# --- mean_std / summarise_seeds ---------------------------------------------------------


def test_mean_std_is_the_mean_and_the_sample_standard_deviation():
    mean, std = mean_std([1, 2, 3, 4])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3))  # ddof=1: sum of squares 5 over n-1 = 3


def test_mean_std_of_one_seed_has_no_std():
    assert mean_std([27.3]) == (27.3, None)


def test_mean_std_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


@pytest.fixture
def two_seeds():
    return {
        1: {"baseline": {"test_bleu": 20.0, "valid_loss": 4.0}, "rdrop": {"test_bleu": 21.0, "valid_loss": 3.5}},
        2: {"baseline": {"test_bleu": 22.0, "valid_loss": 4.2}, "rdrop": {"test_bleu": 25.0, "valid_loss": 3.9}},
    }


def test_summarise_seeds_gives_mean_and_std_per_run(two_seeds):
    out = summarise_seeds(two_seeds, ["test_bleu", "valid_loss"])
    assert set(out) == {"baseline", "rdrop"}
    assert set(out["baseline"]) == {"test_bleu_mean", "test_bleu_std", "valid_loss_mean", "valid_loss_std"}
    assert out["baseline"]["test_bleu_mean"] == 21.0
    assert out["baseline"]["test_bleu_std"] == pytest.approx(math.sqrt(2))
    assert out["rdrop"]["test_bleu_mean"] == 23.0
    assert out["rdrop"]["test_bleu_std"] == pytest.approx(math.sqrt(8))
    assert out["rdrop"]["valid_loss_mean"] == pytest.approx(3.7)


def test_seed_deltas_give_the_per_seed_deltas_and_their_mean_and_std(two_seeds):
    out = seed_deltas(two_seeds, ["test_bleu", "valid_loss"], "baseline", "rdrop")
    bleu = out["test_bleu"]
    assert bleu["per_seed"] == {1: 1.0, 2: 3.0}
    assert bleu["mean"] == 2.0
    assert bleu["std"] == pytest.approx(math.sqrt(2))
    assert out["valid_loss"]["per_seed"] == pytest.approx({1: -0.5, 2: -0.3})


def test_summarise_seeds_and_seed_deltas_of_one_seed_have_no_std(two_seeds):
    out = summarise_seeds({2: two_seeds[2]}, ["test_bleu"])
    assert out["baseline"] == {"test_bleu_mean": 22.0, "test_bleu_std": None}
    assert seed_deltas({2: two_seeds[2]}, ["test_bleu"], "baseline", "rdrop")["test_bleu"] == {
        "mean": 3.0, "std": None, "per_seed": {2: 3.0}}


def test_summarise_seeds_names_the_seed_and_run_missing_a_key(two_seeds):
    del two_seeds[2]["rdrop"]["test_bleu"]
    with pytest.raises(ValueError, match=r"seed 2: run 'rdrop' has no value for test_bleu"):
        summarise_seeds(two_seeds, ["test_bleu"])


# --- paired_bleu_test (sacrebleu) -------------------------------------------------------

WORDS = ("the of and to in a is that for it as was with be by on not he i this are or his "
         "from at which but have an they you were her she there had one all we their").split()
REFS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(8 + i % 5)) + " ." for i in range(40)]


def drop_last_two_words(segment):
    return " ".join(segment.split()[:-2])


@pytest.fixture(autouse=True)
def default_sacrebleu_seed(monkeypatch):
    monkeypatch.delenv("SACREBLEU_SEED", raising=False)


def test_bleu_test_finds_a_perfect_system_significantly_better_than_a_degraded_baseline():
    degraded = [drop_last_two_words(r) for r in REFS]
    res = paired_bleu_test(degraded, REFS, REFS)
    assert res["system_bleu"] == pytest.approx(100.0)
    assert res["baseline_bleu"] < 90
    assert res["system_chrf"] > res["baseline_chrf"]
    assert res["p_value"] < 0.05
    assert res["p_value_chrf"] < 0.05
    assert res["resamples"] == 1000
    assert res["test"] == "sacrebleu paired bootstrap resampling (paired-bs)"
    assert res["seed"] == "12345"
    assert "bs:1000|seed:12345" in res["signature"]
    assert res["sacrebleu_version"] == "2.6.0"


def test_bleu_test_finds_no_difference_between_equally_degraded_systems():
    # each system drops words in the other half of the segments: same BLEU, different output
    evens = [drop_last_two_words(r) if i % 2 == 0 else r for i, r in enumerate(REFS)]
    odds = [drop_last_two_words(r) if i % 2 == 1 else r for i, r in enumerate(REFS)]
    res = paired_bleu_test(evens, odds, REFS)
    assert res["system_bleu"] == pytest.approx(res["baseline_bleu"])
    assert res["p_value"] > 0.3
    assert res["p_value_chrf"] > 0.3


def test_bleu_test_gives_identical_systems_sacrebleus_smallest_p_value():
    # sacrebleu counts resampled differences strictly greater than the observed one:
    # with nothing to count, identical systems get (0 + 1) / (1000 + 1)
    degraded = [drop_last_two_words(r) for r in REFS]
    res = paired_bleu_test(degraded, degraded, REFS, n_samples=1000)
    assert res["system_bleu"] == res["baseline_bleu"]
    assert res["p_value"] == 1 / 1001


def test_bleu_test_is_deterministic_and_follows_the_resample_count():
    degraded = [drop_last_two_words(r) if i % 3 else r for i, r in enumerate(REFS)]
    first = paired_bleu_test(REFS[:20] + degraded[20:], degraded, REFS, n_samples=200)
    second = paired_bleu_test(REFS[:20] + degraded[20:], degraded, REFS, n_samples=200)
    assert first == second
    assert first["resamples"] == 200
    assert 0 < first["p_value"] < 1


def test_bleu_test_rejects_hypotheses_and_references_of_different_lengths():
    with pytest.raises(ValueError, match="same number of segments"):
        paired_bleu_test(REFS, REFS[:-1], REFS)


# --- read_word_logprobs ------------------------------------------------------------------

# fairseq_cli/eval_lm.py: logging.basicConfig(format=..., datefmt=...) and the message of
# --output-word-probs: str(int(sample_id)) + " " + "\t".join("{} [{:2f}]".format(w, p) ...)
FORMATTER = logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


def eval_lm_line(message, name="fairseq_cli.eval_lm"):
    record = logging.makeLogRecord({"name": name, "levelname": "INFO", "levelno": logging.INFO, "msg": message})
    return FORMATTER.format(record)


def word_probs_message(sample_id, word_prob):
    return str(int(sample_id)) + " " + "\t".join("{} [{:2f}]".format(w, p) for w, p in word_prob)


SAMPLES = {
    3: [("the", -2.302585093), ("cat", -7.25), ("[", -0.5), ("]", -1e-7), ("</s>", -0.125)],
    0: [("sat", -10.0), ("</s>", -0.0009765625)],
}
EVAL_LM_OUTPUT = "\n".join([
    eval_lm_line("loading model(s) from checkpoints/checkpoint_best.pt"),
    eval_lm_line("num. model params: 1,234,567 (num. trained: 1,234,567)"),
    eval_lm_line("test data-bin/lm 2 examples"),
    *(eval_lm_line(word_probs_message(i, wp)) for i, wp in SAMPLES.items()),
    eval_lm_line("Evaluated 7 tokens in 0.1s (70.00 tokens/s)"),
    eval_lm_line("2024\t3\t-1.5\tFalse\t-2.0\t3"),  # an --output-word-stats line for the word "2024"
    eval_lm_line("Loss (base 2): 5.1234, Perplexity: 34.87"),
])


def test_word_logprobs_are_read_in_printed_order_at_printed_precision():
    assert EVAL_LM_OUTPUT.splitlines()[3].endswith(" | INFO | fairseq_cli.eval_lm | 3 the [-2.302585]\tcat "
                                                   "[-7.250000]\t[ [-0.500000]\t] [-0.000000]\t</s> [-0.125000]")
    assert read_word_logprobs(EVAL_LM_OUTPUT) == [-2.302585, -7.25, -0.5, -0.0, -0.125, -10.0, -0.000977]


def test_word_logprobs_are_read_in_pythons_default_log_format_too():
    # what fairseq-eval-lm --user-dir prints: the plugin's import configures logging first
    text = "INFO:fairseq_cli.eval_lm:0 no [-7.798718]\tit [-8.930693]\n" \
           "INFO:fairseq_cli.eval_lm:1 fall [-6.456637]\n" \
           "INFO:fairseq_cli.eval_lm:num. model params: 113,968\n"
    assert read_word_logprobs(text) == [-7.798718, -8.930693, -6.456637]


def test_word_logprobs_ignore_word_probability_lines_of_other_loggers():
    other = eval_lm_line(word_probs_message(1, [("dog", -1.0)]), name="fairseq.tasks.language_modeling")
    assert read_word_logprobs(other + "\n" + EVAL_LM_OUTPUT) == read_word_logprobs(EVAL_LM_OUTPUT)


def test_word_logprobs_error_on_output_without_word_probabilities():
    without = "\n".join(line for line in EVAL_LM_OUTPUT.splitlines() if "[" not in line)
    with pytest.raises(ValueError, match="no word probabilities found"):
        read_word_logprobs(without)


def test_word_logprobs_error_on_a_non_finite_value():
    text = eval_lm_line(word_probs_message(0, [("a", -1.0), ("b", float("nan"))]))
    with pytest.raises(ValueError, match=r"line 1: no finite log-probability in word entry 'b \[nan\]'"):
        read_word_logprobs(text)


# --- paired_bootstrap_lm -----------------------------------------------------------------


@pytest.fixture
def baseline_logprobs():
    return list(np.random.default_rng(0).normal(-4.0, 2.0, size=1050))


def test_lm_bootstrap_of_identical_inputs_finds_nothing(baseline_logprobs):
    res = paired_bootstrap_lm(baseline_logprobs, list(baseline_logprobs))
    assert res["p_value"] == 1.0
    assert res["logprob_diff"] == 0.0
    assert res["system_ppl"] == res["baseline_ppl"]
    assert res["ci95"] == [0.0, 0.0]


def test_lm_bootstrap_finds_a_constantly_better_system_significant(baseline_logprobs):
    system = [lp + 0.1 for lp in baseline_logprobs]
    res = paired_bootstrap_lm(baseline_logprobs, system, n_samples=1000)
    assert res["p_value"] < 0.01
    assert res["p_value"] == 1 / 1001
    assert res["logprob_diff"] == pytest.approx(0.1)
    assert res["ci95"] == pytest.approx([0.1, 0.1])
    mean = float(np.mean(baseline_logprobs))
    assert res["baseline_ppl"] == pytest.approx(math.exp(-mean))
    assert res["system_ppl"] == pytest.approx(math.exp(-mean - 0.1))
    assert res["system_ppl"] < res["baseline_ppl"]


def test_lm_bootstrap_perplexities_follow_the_base_of_the_inputs(baseline_logprobs):
    res = paired_bootstrap_lm(baseline_logprobs, [lp - 0.5 for lp in baseline_logprobs], base=2)
    assert res["baseline_ppl"] == pytest.approx(2 ** -np.mean(baseline_logprobs))
    assert res["system_ppl"] == pytest.approx(2 ** (-np.mean(baseline_logprobs) + 0.5))
    assert res["logprob_diff"] == pytest.approx(-0.5)


def test_lm_bootstrap_finds_no_difference_in_zero_mean_noise(baseline_logprobs):
    noise = np.random.default_rng(1).normal(0.0, 1.0, size=len(baseline_logprobs))
    noise -= noise.mean()
    res = paired_bootstrap_lm(baseline_logprobs, list(np.asarray(baseline_logprobs) + noise))
    assert res["logprob_diff"] == pytest.approx(0.0, abs=1e-12)
    assert res["p_value"] > 0.2
    assert res["ci95"][0] < 0 < res["ci95"][1]


def test_lm_bootstrap_is_deterministic_for_a_seed_and_varies_with_it(baseline_logprobs):
    system = list(np.asarray(baseline_logprobs) + np.random.default_rng(2).normal(0.05, 1.0, size=1050))
    first = paired_bootstrap_lm(baseline_logprobs, system, seed=7)
    assert paired_bootstrap_lm(baseline_logprobs, system, seed=7) == first
    assert paired_bootstrap_lm(baseline_logprobs, system, seed=8)["ci95"] != first["ci95"]


def test_lm_bootstrap_rejects_lists_of_different_lengths(baseline_logprobs):
    with pytest.raises(ValueError, match="same tokens: 1050 vs 1049"):
        paired_bootstrap_lm(baseline_logprobs, baseline_logprobs[:-1])


def test_lm_bootstrap_needs_at_least_two_blocks():
    with pytest.raises(ValueError, match="at least two blocks"):
        paired_bootstrap_lm([-1.0] * 100, [-2.0] * 100, block=100)


def test_lm_blocks_are_consecutive_and_the_last_one_may_be_shorter():
    sums, sizes = demo_stats._block_sums(np.arange(250, dtype=float), 100)
    assert sizes.tolist() == [100, 100, 50]
    assert sums.tolist() == [sum(range(100)), sum(range(100, 200)), sum(range(200, 250))]


def test_lm_bootstrap_weighs_a_short_last_block_by_its_tokens():
    # the system is better by 1 on the last 50 of 250 tokens only: 50 / 250 per token,
    # not the mean of the three block means (1/3)
    baseline = [-3.0] * 250
    system = [-3.0] * 200 + [-2.0] * 50
    res = paired_bootstrap_lm(baseline, system, block=100, n_samples=200)
    assert (res["block"], res["n_blocks"], res["n_tokens"], res["resamples"]) == (100, 3, 250, 200)
    assert res["logprob_diff"] == pytest.approx(0.2)
    assert res["system_ppl"] == pytest.approx(math.exp(3.0 - 0.2))


# ---- McNemar's test on two classifiers' predictions --------------------------------------

def test_mcnemar_counts_the_discordant_examples_and_matches_the_binomial_definition():
    from math import comb

    from examples.common.stats import mcnemar_test

    baseline = [True] * 50 + [False] * 30 + [True] * 3 + [False] * 17
    system = [True] * 50 + [False] * 30 + [False] * 3 + [True] * 17
    out = mcnemar_test(baseline, system)
    assert (out["baseline_only"], out["system_only"], out["both"], out["neither"], out["n"]) == (3, 17, 50, 30, 100)
    # two-sided exact binomial p-value written from the definition: 2 * P(X <= 3), X ~ Bin(20, 1/2)
    expected = min(1.0, 2 * sum(comb(20, k) for k in range(0, 4)) / 2 ** 20)
    assert out["p_value"] == pytest.approx(expected, rel=1e-12)
    assert out["p_value"] < 0.01 and "McNemar" in out["test"]


def test_mcnemar_is_symmetric_and_gives_one_without_disagreement():
    from examples.common.stats import mcnemar_test

    a = [True, False, True, True, False, False, True]
    b = [False, False, True, False, True, True, True]
    assert mcnemar_test(a, b)["p_value"] == pytest.approx(mcnemar_test(b, a)["p_value"])
    assert mcnemar_test(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same examples"):
        mcnemar_test(a, b[:-1])
    with pytest.raises(ValueError, match="at least one"):
        mcnemar_test([], [])
