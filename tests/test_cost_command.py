"""The sweeps (examples/sweep.py, end_to_end_cost.py; translation's cost.py and ablations.py,
the language model's cost.py): each setting trained through the demo (its own results file,
the baselines shared), and the summaries' figures from those files."""

from types import SimpleNamespace

import pytest

from examples import end_to_end_cost, sweep
from examples.language_model import cost as lm_cost
from examples.translation import ablations, cost


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
    target = cost.TARGET
    args = SimpleNamespace(mode="quick", threads=1, seeds="1,2", results_dir=target.results_dir)
    assert sweep.results_path(target, args, ()).endswith("translation/results/quick.json")  # make demo's file
    every2 = dict(cost.VARIANTS)["every2"]
    assert every2 == ("--rdrop-flags=--rdrop-every 2",)
    assert sweep.results_path(target, args, every2).endswith("results/quick-every2.json")
    settings = dict(ablations.SETTINGS)
    assert sweep.results_path(target, args, settings["alpha2"]).endswith("results/quick-alpha2.json")
    assert sweep.results_path(target, args, settings["dropout0.3"]).endswith("quick-rdropout0.3.json")
    # a setting that is the mode's own R-Drop (alpha 5, dropout 0.2 in quick) is make demo's run
    assert sweep.results_path(target, args, settings["alpha5"]).endswith("results/quick.json")
    assert sweep.results_path(target, args, settings["dropout0.2"]).endswith("results/quick.json")
    # the language model's sweep drives its own demo, into its own results
    lm_args = SimpleNamespace(mode="quick", threads=1, seeds=None, results_dir=lm_cost.TARGET.results_dir)
    fraction = dict(lm_cost.VARIANTS)["fraction0.25"]
    assert sweep.results_path(lm_cost.TARGET, lm_args, fraction).endswith(
        "language_model/results/quick-fraction0.25.json")
    assert "share-encoder" not in dict(lm_cost.VARIANTS)  # a decoder-only model has no encoder to share


def test_a_setting_whose_results_file_exists_is_done_and_not_trained_again(tmp_path, monkeypatch, capsys):
    # the alpha group holds the mode's own R-Drop (alpha 5): its file is make demo's, never rewritten
    target = cost.TARGET
    (tmp_path / "quick.json").write_text("{}")
    (tmp_path / "quick-alpha1.json").write_text("{}")
    trained = []
    monkeypatch.setattr(target.demo, "main", lambda argv: trained.append(argv[argv.index("--alpha") + 1]) or 0)
    args = SimpleNamespace(mode="quick", threads=1, seeds=None, results_dir=str(tmp_path), only=["alpha"])
    assert sweep.run(target, args, ablations.SETTINGS, ablations.GROUP_NAMES) == 0
    assert trained == ["0.5", "2", "10"]
    out = capsys.readouterr().out
    assert "alpha5: done already" in out and "alpha1: done already" in out


def test_gain_share_and_time_ratio_are_over_full_rdrop_and_the_baseline(tmp_path):
    args = SimpleNamespace(mode="quick", threads=1, argv=[])
    found = {
        "full": ((), results({"1": (6.0, 8.0, 100, 300), "2": (6.0, 8.0, 100, 300)})),
        "every2": (("--rdrop-every", "2"), results({"1": (6.0, 7.5, 100, 150), "2": (6.0, 7.7, 100, 170)})),
    }
    summary = sweep.summary(cost.TARGET, args, "examples.translation.cost", "variants", found, cost.VARIANTS)
    end_to_end_cost.shares(summary, "loss")
    full, every2 = summary["variants"]
    assert (full["mean_delta_bleu"], full["gain_share"], full["time_ratio"]) == (2.0, 1.0, 3.0)
    assert every2["mean_delta_bleu"] == pytest.approx(1.6) and every2["gain_share"] == pytest.approx(0.8)
    assert every2["time_ratio"] == pytest.approx(1.6) and every2["per_seed"]["2"]["time_ratio"] == 1.7
    assert every2["seconds_per_update_ratio"] == pytest.approx(1.6)
    assert summary["baseline"]["seconds_mean"] == 100
    sweep.save_figure(end_to_end_cost.plot(summary), str(tmp_path / "cost.png"))
    assert (tmp_path / "cost.png").stat().st_size > 0
    assert "delta BLEU +1.60" in end_to_end_cost.line(summary, every2)


def test_ablation_groups_name_their_settings_and_every_setting_changes_one_thing():
    assert set(ablations.GROUP_NAMES) == {"alpha", "dropout", "passes", "divergence"}
    assert len(ablations.SETTINGS) >= 12 and all(len(opts) in (1, 2) for _, opts in ablations.SETTINGS)
    args = SimpleNamespace(mode="quick", threads=1, argv=[])
    found = {name: (opts, results({"1": (6.0, 7.0 + i / 10, 100, 250)}))
             for i, (name, opts) in enumerate(ablations.SETTINGS[:3])}
    content = sweep.summary(cost.TARGET, args, "examples.translation.ablations", "settings", found, ablations.SETTINGS)
    assert [s["name"] for s in content["settings"]] == [name for name, _ in ablations.SETTINGS[:3]]
    assert content["settings"][2]["mean_delta_bleu"] == pytest.approx(1.2)
    assert content["settings"][0]["train_seconds_mean"] == 250
    assert content["run_settings"] == {"alpha": 2.0}


def test_the_recommended_variant_is_read_on_validation_among_the_affordable_ones():
    variants = [
        {"name": "full", "time_ratio": 2.9, "best_valid_mean": 5.8},  # best, but not affordable
        {"name": "fraction0.5", "time_ratio": 1.6, "best_valid_mean": 5.9},
        {"name": "every2", "time_ratio": 1.5, "best_valid_mean": 6.0},  # at the limit: affordable
        {"name": "fraction0.25", "time_ratio": 1.2, "best_valid_mean": 6.1},
        {"name": "unknown", "time_ratio": 1.0, "best_valid_mean": None},
    ]
    choose = end_to_end_cost.choose
    assert choose(variants, "loss")["name"] == "every2"
    assert choose(variants, "bleu")["name"] == "fraction0.25"  # a score: the higher the better
    assert "1.5x" in choose(variants, "loss")["rule"]
    assert choose([variants[0]], "loss")["name"] is None  # nothing affordable: nothing recommended


def lm_results(seed_figures):
    """A language-model demo results file's fields that the sweep reads: per seed (baseline
    perplexity, R-Drop perplexity, baseline seconds, R-Drop seconds)."""
    per_seed = {}
    for seed, (b_ppl, r_ppl, b_s, r_s) in seed_figures.items():
        run = lambda ppl, s: {"test_ppl": ppl, "test_loss": 6.0, "epochs": 10, "updates": 100,  # noqa: E731
                              "seconds": s, "best_valid_loss": ppl / 100, "valid_at_baseline_time": 8.6,
                              "seconds_to_baseline_best": s / 2}
        per_seed[seed] = {"baseline": run(b_ppl, b_s), "rdrop": run(r_ppl, r_s),
                          "comparison": {"p_values": {"test_ppl": 0.001}}}
    return {"per_seed": per_seed, "settings": {"alpha": 1.0}, "_path": "lm.json"}


def test_a_perplexity_sweep_shares_a_reduction_and_chooses_on_validation_loss():
    args = SimpleNamespace(mode="quick", threads=1, argv=[])
    found = {
        "full": ((), lm_results({"1": (370.0, 350.0, 100, 300), "2": (372.0, 352.0, 100, 280)})),
        "fraction0.25": (dict(lm_cost.VARIANTS)["fraction0.25"],
                         lm_results({"1": (370.0, 355.0, 100, 140), "2": (372.0, 357.0, 100, 140)})),
    }
    summary = sweep.summary(lm_cost.TARGET, args, "examples.language_model.cost", "variants", found,
                            lm_cost.VARIANTS)
    end_to_end_cost.shares(summary, lm_cost.TARGET.selection("quick"))
    full, fraction = summary["variants"]
    assert summary["scores"] == ["ppl"] and summary["baseline"]["test_ppl_mean"] == 371.0
    assert full["mean_delta_ppl"] == -20.0 and fraction["mean_delta_ppl"] == -15.0
    assert fraction["gain_share"] == 0.75  # a perplexity reduction's share of full R-Drop's
    assert fraction["p_values"] == {"1": 0.001, "2": 0.001}
    assert fraction["best_valid_mean"] == pytest.approx(3.56)  # the validation loss that picks checkpoints
    assert summary["chosen_on_validation"]["name"] == "fraction0.25"  # full is not affordable
    assert "delta perplexity -15.00" in end_to_end_cost.line(summary, fraction)
