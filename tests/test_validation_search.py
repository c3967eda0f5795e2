"""examples/validation_search.py: the search's table and the checks of its options (training
itself is the demos', tested with them)."""

import pytest

from examples import validation_search as vs


def record(run, semi_flags=None, best=40.0):
    settings = {"base_mode": "quick", "run": run, "semi_flags": semi_flags, "dropout": 0.1, "alpha": 1.0,
                "patience": 3, "seed": 1}
    return {"settings": settings, "run": run, "metric": "valid_accuracy", "best": best, "best_epoch": 9,
            "epochs": 12, "stopped_early": True, "seconds": 321.4,
            "curve": [{"epoch": 9, "loss": 2.5, "accuracy": best}]}


def test_the_table_shows_the_semi_supervised_runs_own_flags_only_where_there_are_some():
    plain = vs.table_lines([record("baseline"), record("rdrop")])
    assert "semi_flags" not in plain[0] and len(plain) == 4
    lines = vs.table_lines([record("baseline"), record("semi", "--rdrop-unlabeled-alpha 3", best=41.5)])
    assert lines[0].split(" | ")[-7] == "semi_flags"  # after the settings, before the figures
    assert "| semi |" in lines[3] and "| --rdrop-unlabeled-alpha 3 |" in lines[3]
    assert "valid_accuracy 41.5" in lines[3] and "| - |" in lines[2]  # the baseline has none
    assert all(line.count("|") == lines[0].count("|") for line in lines)


@pytest.mark.parametrize("argv", [["lm", "--run", "semi"], ["translation", "--run", "rdrop", "--semi-flags=--unlabeled-ratio 2"]])
def test_the_semi_supervised_run_is_the_classification_demos_alone(argv):
    with pytest.raises(SystemExit, match="classification demo"):
        vs.main(argv)


def test_a_run_its_base_mode_does_not_train_is_refused():
    with pytest.raises(SystemExit, match="--run semi: base mode quick does not train it; --base-mode full or medium or tiny$"):
        vs.main(["cls", "--base-mode", "quick", "--run", "semi"])
