"""examples/translation/cost.py: each variant trained through the demo (its own results file,
the baselines shared), and cost.json's figures from those files."""

from types import SimpleNamespace

import pytest

from examples.translation import cost


def results(seed_figures, path="r.json"):
    """A demo results file's fields that cost.py reads: per seed (baseline BLEU, R-Drop BLEU,
    baseline seconds, R-Drop seconds)."""
    per_seed = {}
    for seed, (b_bleu, r_bleu, b_s, r_s) in seed_figures.items():
        run = lambda bleu, s: {"test_bleu": bleu, "test_chrf": bleu * 2, "epochs": 10, "updates": 100,  # noqa: E731
                               "seconds": s, "best_valid": 6.0, "valid_at_baseline_time": 6.1,
                               "seconds_to_baseline_best": s / 2}
        per_seed[seed] = {"baseline": run(b_bleu, b_s), "rdrop": run(r_bleu, r_s),
                          "comparison": {"p_values": {"test_bleu": 0.01}}}
    return {"per_seed": per_seed, "settings": {"alpha": 2.0}, "_path": path}


def test_variants_share_the_baseline_and_name_their_results_after_their_flags(tmp_path):
    args = SimpleNamespace(mode="quick", threads=1, seeds="1,2")
    assert cost.results_path(args, ()).endswith("results/quick.json")  # the mode's seeds: make demo's file
    assert cost.results_path(args, ("--rdrop-every", "2")).endswith("-every2.json")
    assert cost.demo_argv(args, ("--rdrop-fraction", "0.5"))[-1] == "--rdrop-flags=--rdrop-fraction 0.5"


def test_gain_share_and_time_ratio_are_over_full_rdrop_and_the_baseline(tmp_path):
    args = SimpleNamespace(mode="quick", threads=1, argv=[])
    found = {
        "full": ((), results({"1": (6.0, 8.0, 100, 300), "2": (6.0, 8.0, 100, 300)})),
        "every2": (("--rdrop-every", "2"), results({"1": (6.0, 7.5, 100, 150), "2": (6.0, 7.7, 100, 170)})),
    }
    summary = cost.summarise(args, found)
    full, every2 = summary["variants"]
    assert (full["mean_delta_bleu"], full["gain_share"], full["time_ratio"]) == (2.0, 1.0, 3.0)
    assert every2["mean_delta_bleu"] == pytest.approx(1.6) and every2["gain_share"] == pytest.approx(0.8)
    assert every2["time_ratio"] == pytest.approx(1.6) and every2["per_seed"]["2"]["time_ratio"] == 1.7
    assert every2["seconds_per_update_ratio"] == pytest.approx(1.6)
    assert summary["baseline"]["seconds_mean"] == 100
    cost.plot(summary, str(tmp_path / "cost.png"))
    assert (tmp_path / "cost.png").stat().st_size > 0
