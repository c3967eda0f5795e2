"""The sentence-classification demo (masked-LM pre-training, then sentence_prediction,
rdrop_sentence_prediction and semi-supervised R-Drop on Debian sections), tiny mode, end to end."""

import functools
import json
import os

import pytest

from tests.example_helpers import REPO, run_module

DEMO = "examples.classification.demo"

run_demo = functools.partial(run_module, DEMO, timeout=900)


def test_bad_settings_are_refused_before_anything_runs(tmp_path):
    r = run_demo("--mode", "tiny", "--alpha", "-1", "--work-dir", tmp_path / "w", "--results-dir", tmp_path / "r")
    assert r.returncode == 2 and "--alpha must be >= 0" in r.stderr
    r = run_demo("--mode", "tiny", "--train-limit", "3", "--work-dir", tmp_path / "w", "--results-dir", tmp_path / "r")
    assert r.returncode == 2 and "--train-limit must be >= 10" in r.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("mode", ["tiny", "medium", "full"])
def test_every_mode_gives_pretraining_and_fine_tuning_commands_fairseq_accepts(mode, tmp_path):
    from fairseq import options

    from examples.classification import demo
    args = demo.parse_args(["--mode", mode, "--work-dir", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r")])

    def parsed(cmd, data_dir):
        return options.parse_args_and_arch(options.get_training_parser(), input_args=cmd[cmd.index(data_dir):])

    pre = parsed(demo.pretrain_command(args, str(tmp_path / "mlm"), str(tmp_path / "pre")), str(tmp_path / "mlm"))
    assert pre.task == "masked_lm" and pre.max_update == demo.MODES[mode]["pretrain"]["max-update"]
    data = {"cls_bin": str(tmp_path / "cls"), "classes": 35, "pretrain": {"checkpoint": str(tmp_path / "pre.pt")}}
    data["unlabeled_subset"] = "unlabeled"
    runs = {run: parsed(demo.train_command(args, data, str(tmp_path / run), run, 1), data["cls_bin"])
            for run in ("baseline", "rdrop", "semi")}
    base, rdrop, semi = runs["baseline"], runs["rdrop"], runs["semi"]
    assert base.criterion == "sentence_prediction" and rdrop.criterion == "rdrop_sentence_prediction"
    for key in ("arch", "lr", "max_epoch", "patience", "seed", "batch_size", "max_positions",
                "finetune_from_model", "num_classes", "encoder_layers", "encoder_embed_dim"):
        assert getattr(base, key) == getattr(rdrop, key) == getattr(semi, key), key
    # each criterion at its own dropout; the semi-supervised run is R-Drop's, with the unlabeled
    # split mixed in and weighed
    assert (base.dropout, rdrop.dropout) == (args.default_dropout_of["baseline"], args.default_dropout_of["rdrop"])
    assert semi.criterion == rdrop.criterion and semi.rdrop_alpha == rdrop.rdrop_alpha
    assert semi.dropout == rdrop.dropout
    assert rdrop.task == "sentence_prediction" and rdrop.rdrop_unlabeled_alpha == 0
    assert semi.task == "sentence_prediction_unlabeled" and semi.unlabeled_subset == "unlabeled"
    assert semi.unlabeled_ratio == demo.MODES[mode]["semi"]["unlabeled-ratio"]
    assert semi.rdrop_unlabeled_alpha == demo.MODES[mode]["semi"]["rdrop-unlabeled-alpha"] > 0
    assert base.encoder_embed_dim == pre.encoder_embed_dim and base.max_positions == pre.tokens_per_sample
    assert base.best_checkpoint_metric == "accuracy" and base.maximize_best_checkpoint_metric
    if mode != "tiny":
        assert base.patience > 0 and base.max_epoch >= 5 * base.patience


def test_tiny_classification_demo_pretrains_once_fine_tunes_both_runs_and_compares_them(tmp_path):
    args = ["--mode", "tiny", "--threads", "1", "--work-dir", tmp_path / "work", "--results-dir", tmp_path / "res"]
    r = run_demo(*args, "--jobs", "2")
    assert r.returncode == 0, f"demo failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "pretrain: masked-LM pre-training on 2000 descriptions" in r.stdout
    assert "training 6 runs, 2 at once" in r.stdout and "test accuracy" in r.stdout

    assert_unlabeled_split(tmp_path / "work" / "data", train_limit=200)
    res = json.loads((tmp_path / "res" / "tiny.json").read_text())
    assert {"seeds", "per_seed", "baseline", "rdrop", "delta_accuracy", "p_values", "significance",
            "stopped_early", "commit", "command", "date", "machine", "pretrain", "data"} <= set(res)
    assert res["seeds"] == [1, 2] and res["data"]["classes"] == 35
    assert "McNemar" in res["significance"]["test"]
    assert "--task masked_lm" in res["pretrain"]["command"]
    for stat in ("test_accuracy_mean", "test_accuracy_std", "test_macro_f1_mean", "best_valid_accuracy_mean"):
        assert stat in res["baseline"] and stat in res["rdrop"] and stat in res["semi"]
    assert set(res["other_comparisons"]) == {"semi_vs_baseline", "semi_vs_rdrop"}
    assert res["unlabeled"]["sentences"] == res["data"]["counts"]["unlabeled"] > 0
    pretrained = os.path.join(tmp_path / "work", "pretrain", "checkpoint_last.pt")
    for seed, runs in res["per_seed"].items():
        for run in ("baseline", "rdrop", "semi"):
            rec = runs[run]
            assert rec["epochs"] == 2 and rec["updates"] > 0 and rec["stopped_early"] is False
            # the test figures are the predictions file's, one line per test sentence
            rows = [line.split() for line in open(os.path.join(REPO, rec["predictions"]), encoding="utf-8")]
            assert len(rows) == res["data"]["counts"]["test"] == 100
            accuracy = 100.0 * sum(p == g for p, g in rows) / len(rows)
            assert rec["test_accuracy"] == pytest.approx(accuracy)
            from sklearn.metrics import f1_score

            gold = [g for _, g in rows]
            f1 = 100.0 * f1_score(gold, [p for p, _ in rows], average="macro", labels=sorted(set(gold)), zero_division=0)
            assert rec["test_macro_f1"] == pytest.approx(f1) and 0 <= f1 <= 100
            assert f"--finetune-from-model {pretrained}" in rec["train_command"]
        assert "--criterion sentence_prediction" in runs["baseline"]["train_command"]
        assert "--criterion rdrop_sentence_prediction --rdrop-alpha 1.0" in runs["rdrop"]["train_command"]
        assert "--task sentence_prediction_unlabeled --unlabeled-subset unlabeled" in runs["semi"]["train_command"]
        assert "--rdrop-unlabeled-alpha 1.0" in runs["semi"]["train_command"]
        discordant = runs["comparison"]["discordant"]
        assert sum(discordant[k] for k in ("baseline_only", "system_only", "both", "neither")) == 100
        assert 0 < res["p_values"]["test_accuracy"][seed] <= 1
        # McNemar's test of the semi-supervised run against each of the others, on its own predictions
        for name, other in (("semi_vs_baseline", "baseline"), ("semi_vs_rdrop", "rdrop")):
            test = runs["other_comparisons"][name]
            assert 0 < test["p_values"]["test_accuracy"] <= 1
            assert res["other_comparisons"][name]["p_values"]["test_accuracy"][seed] == test["p_values"]["test_accuracy"]
            delta = runs["semi"]["test_accuracy"] - runs[other]["test_accuracy"]
            assert test["discordant"]["system_only"] - test["discordant"]["baseline_only"] == round(delta)
            assert res["other_comparisons"][name]["deltas"]["test_accuracy"]["per_seed"][seed] == pytest.approx(
                delta, abs=1e-4)

    # a rerun finds everything done: nothing is pre-trained or trained again
    again = run_demo(*args, "--jobs", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pretrain: done already" in again.stdout and "starting" not in again.stdout
    assert json.loads((tmp_path / "res" / "tiny.json").read_text())["per_seed"] == res["per_seed"]



def assert_unlabeled_split(data_dir, train_limit):
    """Semi-supervised R-Drop's data: cls/input0/unlabeled holds every training description the
    labelled slice leaves out, with the slice's dictionary, and no label file of it exists."""
    from examples.classification import debian_sections as ds

    text = data_dir / "text"
    unlabeled = (text / "unlabeled.input0").read_text(encoding="utf-8").splitlines()
    labelled = (text / "train.input0").read_text(encoding="utf-8").splitlines()
    every = [t for _, _, t in ds.read_tsv(ds.SNAPSHOT)["train"]]
    assert len(labelled) == train_limit and len(unlabeled) == len(every) - train_limit
    assert sorted(unlabeled + labelled) == sorted(every) and not set(labelled) & set(unlabeled)
    cls = data_dir / "bin" / "cls"
    assert (cls / "input0" / "unlabeled.bin").exists() and (cls / "input0" / "unlabeled.idx").exists()
    assert not list((cls / "label").glob("unlabeled.*"))
    assert sorted(p.name for p in (data_dir / "bin").iterdir() if not p.name.startswith(".")) == ["cls", "mlm"]


def test_quick_trains_the_baseline_and_r_drop_and_medium_adds_the_semi_supervised_run_in_quicks_work_dir(
        tmp_path):
    from examples.classification import demo
    from examples.common.base import DemoError
    from examples.common.cli import check_demo_args
    from examples.common.naming import results_stem, run_dir

    results = ["--results-dir", str(tmp_path / "r")]
    quick, medium = (demo.parse_args(["--mode", mode] + results) for mode in ("quick", "medium"))
    assert quick.runs == ("baseline", "rdrop") and quick.comparisons == (("baseline", "rdrop"),)
    assert medium.runs == demo.RUNS and medium.comparisons == demo.COMPARISONS
    assert quick.work_dir == medium.work_dir and quick.work_dir.endswith(os.path.join("work", "quick"))
    assert (results_stem(quick), results_stem(medium)) == ("quick", "medium")
    data = {"cls_bin": str(tmp_path / "cls"), "classes": 35, "pretrain": {"checkpoint": str(tmp_path / "pre.pt")},
            "unlabeled_subset": "unlabeled"}
    for run in quick.runs:  # the same runs: medium finds quick's done
        assert run_dir(quick, run, 2) == run_dir(medium, run, 2)
        assert (demo.train_command(quick, data, run_dir(quick, run, 2), run, 2)
                == demo.train_command(medium, data, run_dir(medium, run, 2), run, 2))
    # the quick mode's settings are the search rows it names
    chosen = demo.QUICK_CHOSEN
    assert (quick.default_dropout_of["baseline"], quick.default_dropout_of["rdrop"]) == (
        chosen["baseline"]["dropout"], chosen["rdrop"]["dropout"])
    assert quick.default_alpha == chosen["rdrop"]["alpha"]
    assert medium.default_dropout_of["semi"] == chosen["rdrop"]["dropout"]
    semi = demo.semi_flags(medium)
    assert semi[semi.index("--rdrop-unlabeled-alpha") + 1] == str(chosen["semi"]["rdrop-unlabeled-alpha"])
    # what quick has not is refused before anything runs, saying where it is
    with pytest.raises(DemoError, match="the semi-sup. run is in mode full, medium, tiny"):
        check_demo_args(demo.parse_args(["--mode", "quick", "--run", "semi"] + results))
    with pytest.raises(DemoError, match="--semi-flags: mode quick has no semi-supervised run; it is in mode full, medium, tiny$"):
        demo.check_setup(demo.parse_args(["--mode", "quick", "--semi-flags=--unlabeled-ratio 2"] + results))
    assert not (tmp_path / "r").exists() and not os.path.exists(os.path.join(quick.work_dir, "baseline-seed2"))
