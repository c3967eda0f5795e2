"""The demos' training runs: skipped when done, resumed when interrupted, continued when the budget grows.

A stand-in for ``fairseq-train`` (a few lines of Python) writes what the demo
reads: json validation records in ``train.log``, ``checkpoint_last.pt`` /
``checkpoint_best.pt``; it continues from ``checkpoint_last.pt`` like fairseq.
"""

import json
import os
import sys

import pytest

from examples.common import fairseq_log, naming, status, training
from examples.common.base import DemoError
from examples.common.training import train_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_TRAIN = r"""
import json, os, sys
args = sys.argv[1:]
opt = {args[i]: args[i + 1] for i in range(0, len(args) - 1) if args[i].startswith("--")}
save = opt["--save-dir"]
max_epoch = int(opt["--max-epoch"])
stop_at = int(os.environ.get("FAKE_STOP_AT", "0"))  # "patience" ends the run after this epoch
last = os.path.join(save, "checkpoint_last.pt")
first = int(open(last).read()) + 1 if os.path.exists(last) else 1
with open(os.path.join(os.path.dirname(save), "invocations"), "a") as f:
    f.write(f"{first}\n")
with open(os.path.join(save, "train.log"), "a") as log:
    for epoch in range(first, max_epoch + 1):
        log.write(json.dumps({"epoch": epoch, "valid_loss": str(10.0 / epoch), "valid_num_updates": str(10 * epoch)}) + "\n")
        open(last, "w").write(str(epoch))
        open(os.path.join(save, "checkpoint_best.pt"), "w").write(str(epoch))
        if epoch == stop_at and "--patience" in opt:
            break
        if epoch == int(os.environ.get("FAKE_FAIL_AT", "0")):
            import time; time.sleep(0.3); sys.exit(1)
"""


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    save_dir = tmp_path / "run"

    def run(max_epoch, patience=None, lr="1e-3", data=None):
        cmd = [sys.executable, str(script), "--save-dir", str(save_dir), "--lr", lr, "--max-epoch", str(max_epoch)]
        if patience is not None:
            cmd += ["--patience", str(patience)]
        return train_run(cmd, str(save_dir), "rdrop", 1, ("loss",), data=data)

    def invocations():
        path = tmp_path / "invocations"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    run.invocations = invocations
    run.save_dir = save_dir
    return run


def epochs(info):
    return [e["epoch"] for e in info["epochs"]]


def test_finished_run_is_skipped(fake):
    assert epochs(fake(3)) == [1, 2, 3]
    assert epochs(fake(3)) == [1, 2, 3]
    assert fake.invocations() == [1]  # the second call ran nothing


def test_larger_budget_continues_the_finished_run(fake, capsys):
    first = fake(3)
    info = fake(5)
    assert "continuing the finished run of 3 epochs" in capsys.readouterr().out
    assert fake.invocations() == [1, 4]  # continued from checkpoint_last, not retrained
    assert epochs(info) == [1, 2, 3, 4, 5] and info["updates"] == 50
    assert info["resumed"] and info["seconds"] >= first["seconds"]
    assert info["budget"] == {"--max-epoch": "5"}
    # and now that is the finished run
    assert epochs(fake(5)) == [1, 2, 3, 4, 5] and fake.invocations() == [1, 4]


def test_run_that_stopped_early_is_not_retrained(fake, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_STOP_AT", "4")
    assert epochs(fake(10, patience=2)) == [1, 2, 3, 4]
    assert epochs(fake(20, patience=2)) == [1, 2, 3, 4]
    assert "stopped early at epoch 4" in capsys.readouterr().out
    assert fake.invocations() == [1]
    # a different patience is a different budget: it continues
    monkeypatch.setenv("FAKE_STOP_AT", "6")
    assert epochs(fake(20, patience=5)) == [1, 2, 3, 4, 5, 6]
    assert fake.invocations() == [1, 5]


def test_smaller_budget_than_trained_is_refused_and_keeps_the_run(fake):
    fake(5)
    with pytest.raises(DemoError, match="holds a run of 5 epochs; --max-epoch 3"):
        fake(3)
    assert (fake.save_dir / "done.json").exists() and (fake.save_dir / "checkpoint_best.pt").exists()


def test_interrupted_longer_run_is_not_taken_for_a_smaller_budget(fake, monkeypatch):
    # a run continued to --max-epoch 8 and killed at epoch 6: a --max-epoch 4 invocation
    # would stop at once and record 6 epochs as the 4-epoch run
    fake(4)
    monkeypatch.setenv("FAKE_FAIL_AT", "6")
    with pytest.raises(DemoError, match="failed"):
        fake(8)
    monkeypatch.delenv("FAKE_FAIL_AT")
    with pytest.raises(DemoError, match="holds a run of 6 epochs; --max-epoch 4"):
        fake(4)
    assert fake.invocations() == [1, 5]
    assert (fake.save_dir / "started.json").exists() and (fake.save_dir / "checkpoint_last.pt").exists()
    assert epochs(fake(8)) == list(range(1, 9))  # the longer budget still resumes it


def test_other_settings_start_afresh(fake):
    fake(3)
    info = fake(3, lr="5e-4")
    assert fake.invocations() == [1, 1] and epochs(info) == [1, 2, 3] and not info["resumed"]


def test_interrupted_run_resumes(fake):
    fake(3)
    os.remove(fake.save_dir / "done.json")  # as if killed after its last epoch
    info = fake(4)
    assert fake.invocations() == [1, 4] and info["resumed"] and epochs(info) == [1, 2, 3, 4]


def test_failed_run_resumes_and_its_time_counts(fake, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_AT", "2")
    with pytest.raises(DemoError, match="failed with exit code 1"):
        fake(4)
    spent = json.loads((fake.save_dir / "started.json").read_text())["prior_seconds"]
    assert spent >= 0.3
    monkeypatch.delenv("FAKE_FAIL_AT")
    info = fake(4)
    assert fake.invocations() == [1, 3] and info["resumed"] and epochs(info) == [1, 2, 3, 4]
    assert info["seconds"] >= spent


def test_a_record_of_an_earlier_format_starts_the_run_afresh_keeping_the_old_one(fake):
    """done.json without a settings key (the demos' earlier format) is not trusted: the run restarts."""
    info = fake(3)
    for name in ("done.json", "started.json"):  # both written in the earlier format
        path = fake.save_dir / name
        record = json.loads(path.read_text()) if path.exists() else info
        path.write_text(json.dumps({k: v for k, v in record.items() if k not in ("settings_key", "budget")}))
    assert epochs(fake(3)) == [1, 2, 3] and fake.invocations() == [1, 1]  # afresh, from epoch 1
    aside = [p for p in fake.save_dir.parent.iterdir() if p.name.startswith(fake.save_dir.name + ".replaced-")]
    assert len(aside) == 1 and (aside[0] / "done.json").exists()


def test_budget_flags_do_not_change_the_settings_key():
    a = ["fairseq-train", "data", "--lr", "1e-3", "--max-epoch", "3", "--patience", "2"]
    b = ["fairseq-train", "data", "--lr", "1e-3", "--max-epoch", "9", "--patience", "5"]
    c = ["fairseq-train", "data", "--lr", "2e-3", "--max-epoch", "3", "--patience", "2"]
    assert training._settings_key(a) == training._settings_key(b) != training._settings_key(c)
    assert training._full_key(a) != training._full_key(b)
    assert training._budget(b) == {"--max-epoch": "9", "--patience": "5"}


def test_train_log_gives_validation_and_training_values_per_epoch(tmp_path):
    """fairseq writes each epoch's validation record, then its training summary; a resumed epoch replaces."""
    recs = [
        {"epoch": 1, "update": 0.5, "loss": "9.9", "num_updates": "5"},  # train_inner: not an epoch value
        {"epoch": 1, "valid_loss": "5.0", "valid_nll_loss": "4.0", "valid_ppl": "16", "valid_num_updates": "10"},
        {"epoch": 1, "train_loss": "6.0", "train_nll_loss": "5.0", "train_ppl": "32", "train_num_updates": "10"},
        {"epoch": 2, "valid_loss": "4.5", "valid_nll_loss": "3.5", "valid_num_updates": "20"},
        # interrupted before epoch 2's summary, resumed from epoch 1's checkpoint: epoch 2 again
        {"epoch": 2, "valid_loss": "4.4", "valid_nll_loss": "3.4", "valid_num_updates": "20"},
        {"epoch": 2, "train_loss": "5.5", "train_nll_loss": "4.5", "train_num_updates": "20"},
    ]
    log = tmp_path / "train.log"
    # fairseq may write each record more than once, and stdout lines carry a prefix
    log.write_text("".join(f"2026-01-01 | INFO | valid | {json.dumps(r)}\n{json.dumps(r)}\n" for r in recs))
    parsed = fairseq_log.parse_train_log(str(log), ("loss", "nll_loss", "ppl"))
    assert parsed["updates"] == 20
    assert parsed["epochs"] == [
        {"epoch": 1, "loss": 5.0, "nll_loss": 4.0, "ppl": 16.0, "updates": 10,
         "train_loss": 6.0, "train_nll_loss": 5.0, "train_ppl": 32.0},
        {"epoch": 2, "loss": 4.4, "nll_loss": 3.4, "updates": 20, "train_loss": 5.5, "train_nll_loss": 4.5},
    ]


def test_time_so_far_is_on_disk_when_the_demo_is_killed_outright(tmp_path):
    """SIGKILL (a session or job ended) leaves no chance to record anything: the record is kept current."""
    import signal
    import subprocess
    import time

    save_dir = tmp_path / "run"
    driver = f"""
import sys
from examples.common import training
training.TIME_RECORD_SECONDS = 0.2
sleeper = [sys.executable, "-c", "import time; time.sleep(60)", "--save-dir", {str(save_dir)!r}, "--max-epoch", "3"]
training.train_run(sleeper, {str(save_dir)!r}, "rdrop", 1, ("loss",))
"""
    proc = subprocess.Popen([sys.executable, "-c", driver], start_new_session=True, cwd=REPO)
    started = save_dir / "started.json"
    deadline = time.time() + 600  # generous: on a loaded machine too; the assertion below decides
    while time.time() < deadline and not (
        started.exists() and json.loads(started.read_text()).get("prior_seconds", 0) >= 1.0
    ):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the demo and its training, with no warning
    proc.wait()
    assert json.loads(started.read_text())["prior_seconds"] >= 1.0


def _status_args(tmp_path):
    import argparse

    return argparse.Namespace(mode="medium", work_dir=str(tmp_path / "work"), alpha=1.0, default_alpha=1.0,
                              dropout=None, default_dropout_of={"baseline": 0.3, "rdrop": 0.3}, seeds=(7,),
                              runs=("baseline", "rdrop"))


def test_status_reads_every_state_and_changes_nothing(fake, monkeypatch):
    assert status.run_status(str(fake.save_dir), ("loss",))["state"] == "not started"
    fake(3)
    st = status.run_status(str(fake.save_dir), ("loss",))
    assert st["state"] == "finished" and "budget of 3 epochs used up" in st["note"]
    assert [e["epoch"] for e in st["epochs"]] == [1, 2, 3] and st["updates"] == 30
    assert st["budget"] == {"--max-epoch": "3"}

    monkeypatch.setenv("FAKE_FAIL_AT", "5")
    with pytest.raises(DemoError):
        fake(8)
    files = {p: p.stat().st_mtime_ns for p in fake.save_dir.iterdir()}
    started = fake.save_dir / "started.json"
    st = status.run_status(str(fake.save_dir), ("loss",))
    assert st["state"] == "interrupted"  # its time record is fresh, but its process has ended
    assert {p: p.stat().st_mtime_ns for p in fake.save_dir.iterdir()} == files
    record = json.loads(started.read_text())
    started.write_text(json.dumps({k: v for k, v in record.items() if k != "stopped"}))
    files = {p: p.stat().st_mtime_ns for p in fake.save_dir.iterdir()}
    st = status.run_status(str(fake.save_dir), ("loss",))
    assert st["state"] == "training"  # a fresh record of a live run looks like this
    st = status.run_status(str(fake.save_dir), ("loss",), now=started.stat().st_mtime + 3600)
    assert st["state"] == "interrupted" and "resumes" in st["note"]
    assert len(st["epochs"]) == 5 and st["budget"] == {"--max-epoch": "8"}
    assert st["seconds"] == json.loads(started.read_text())["prior_seconds"]
    assert {p: p.stat().st_mtime_ns for p in fake.save_dir.iterdir()} == files


def test_status_says_a_run_stopped_early(fake, monkeypatch):
    monkeypatch.setenv("FAKE_STOP_AT", "4")
    fake(10, patience=2)
    st = status.run_status(str(fake.save_dir), ("loss",))
    assert st["state"] == "finished" and st["note"] == "stopped early (--patience 2) at epoch 4"


def test_status_table_pairs_the_runs_by_epoch(tmp_path, capsys):
    args = _status_args(tmp_path)
    for run, values in (("baseline", (9.0, 7.0, 8.0)), ("rdrop", (9.5, 6.5))):
        os.makedirs(naming.run_dir(args, run, 7))
        with open(os.path.join(naming.run_dir(args, run, 7), "train.log"), "w") as f:
            for epoch, v in enumerate(values, 1):
                f.write(json.dumps({"epoch": epoch, "valid_loss": v, "valid_bleu": 10 + epoch}) + "\n")
        with open(os.path.join(naming.run_dir(args, run, 7), "started.json"), "w") as f:
            json.dump({"budget": {"--max-epoch": "9"}, "prior_seconds": 7200}, f)
    status.print_status(args, ("loss", "bleu"))
    out = capsys.readouterr().out
    assert "seed 7" in out and "baseline  training: 3 epochs" in out and "2.00 h (--max-epoch 9)" in out
    assert "best valid loss 7.00 at epoch 2" in out and "best valid loss 6.50 at epoch 2" in out
    assert "best valid bleu 13.00 at epoch 3" in out and "best valid bleu 12.00 at epoch 2" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])}
    assert rows["2"] == ["7.00", "6.50", "-0.50", "12.00", "12.00", "+0.00"]
    assert rows["3"] == ["8.00", "-", "-", "13.00", "-", "-"]


def test_a_run_on_other_data_starts_afresh_and_the_old_one_is_kept(fake, capsys):
    fake(3, data="aaaa")
    assert epochs(fake(3, data="aaaa")) == [1, 2, 3] and fake.invocations() == [1]
    info = fake(3, data="bbbb")
    assert fake.invocations() == [1, 1] and not info["resumed"] and info["data_key"] == "bbbb"
    assert "held a run of other settings or data; kept as" in capsys.readouterr().out
    kept = [p for p in fake.save_dir.parent.iterdir() if p.name.startswith("run.replaced-")]
    assert len(kept) == 1 and json.loads((kept[0] / "done.json").read_text())["data_key"] == "aaaa"


def test_a_record_without_a_data_key_is_no_match_for_keyed_data(fake):
    fake(3)  # no data key recorded
    os.remove(fake.save_dir / "done.json")  # interrupted after its last epoch
    info = fake(4, data="cccc")
    assert fake.invocations() == [1, 1] and not info["resumed"] and info["data_key"] == "cccc"


def test_data_key_reads_what_training_reads(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    for name, text in (("dict.txt", "a 1\n"), ("train.bin", "x"), ("train.idx", "y"), ("preprocess.log", "t0")):
        (d / name).write_text(text)
    key = training.data_key(str(d))
    (d / "preprocess.log").write_text("t1")  # logs and stamps are not data
    (d / ".stage.json").write_text("{}")
    assert training.data_key(str(d)) == key
    (d / "train.bin").write_text("z")
    assert training.data_key(str(d)) != key


def test_an_earlier_results_file_is_kept_under_the_date_of_its_own_run(tmp_path):
    """A fresh clone gives every file the clone's time: the earlier results keep their run's date,
    the figure beside them the same name."""
    from examples.common.report import write_results

    (tmp_path / "quick.json").write_text(json.dumps({"date": "2026-12-03T10:04:05Z", "mode": "quick"}))
    (tmp_path / "quick.png").write_bytes(b"old figure")
    write_results(str(tmp_path), "quick", {"date": "2026-12-06T12:00:00Z"},
                  lambda path: open(path, "wb").write(b"new figure"))
    assert json.loads((tmp_path / "quick.20261203-100405.json").read_text())["mode"] == "quick"
    assert (tmp_path / "quick.20261203-100405.png").read_bytes() == b"old figure"
    assert json.loads((tmp_path / "quick.json").read_text())["date"] == "2026-12-06T12:00:00Z"
    # a second rerun on the same results date keeps both earlier pairs
    write_results(str(tmp_path), "quick", {"date": "2026-12-06T12:00:00Z"},
                  lambda path: open(path, "wb").write(b"newer figure"))
    assert (tmp_path / "quick.20261206-120000.png").read_bytes() == b"new figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "quick.20261203-100405.json", "quick.20261203-100405.png", "quick.20261206-120000.json",
        "quick.20261206-120000.png", "quick.json", "quick.png"]


def test_status_shows_every_run_of_a_demo_with_a_third_run(tmp_path, capsys):
    args = _status_args(tmp_path)
    args.runs = ("baseline", "rdrop", "semi")
    args.default_dropout_of["semi"] = 0.3
    for run, values in (("baseline", (9.0, 7.0)), ("rdrop", (9.5, 6.5)), ("semi", (9.2, 6.0))):
        os.makedirs(naming.run_dir(args, run, 7))
        with open(os.path.join(naming.run_dir(args, run, 7), "train.log"), "w") as f:
            for epoch, v in enumerate(values, 1):
                f.write(json.dumps({"epoch": epoch, "valid_loss": v}) + "\n")
    status.print_status(args, ("loss",))
    out = capsys.readouterr().out
    assert "\nsemi " in out and "best valid loss 6.00 at epoch 2" in out and "semi-sup." in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (["1"], ["2"])}
    assert rows["2"] == ["7.00", "6.50", "6.00", "-0.50"]  # each run, then R-Drop against the baseline


def test_a_third_run_is_named_like_rdrop_with_its_own_flags_after_them(tmp_path):
    from examples.classification import demo

    def parsed(*argv):
        return demo.parse_args(["--mode", "medium", "--work-dir", str(tmp_path / "w"), "--results-dir",
                                str(tmp_path / "r"), *argv])

    args = parsed()
    assert args.runs == ("baseline", "rdrop", "semi") and naming.results_stem(args) == "medium"
    assert os.path.basename(naming.run_dir(args, "semi", 1)) == "semi-seed1"
    args = parsed("--alpha", "2", "--rdrop-dropout", "0.2", "--semi-flags", "--unlabeled-ratio 2")
    assert os.path.basename(naming.run_dir(args, "rdrop", 1)) == "rdrop-dropout0.2-alpha2-seed1"
    assert os.path.basename(naming.run_dir(args, "semi", 1)) == "semi-dropout0.2-alpha2-unlabeled-ratio2-seed1"
    assert naming.results_stem(args) == "medium-rdropout0.2-alpha2-unlabeled-ratio2"
    with pytest.raises(SystemExit):  # only the unlabeled objective's flags
        parsed("--semi-flags", "--lr 1")


def test_the_table_gives_a_third_run_its_column_and_each_pair_its_delta_and_p():
    from examples.common.report import seed_table

    per_seed = {s: {"baseline": {"acc": 40.0 + s}, "rdrop": {"acc": 41.0 + s}, "semi": {"acc": 43.5 + s}}
                for s in (1, 2)}
    pairs = (("baseline", "rdrop"), ("baseline", "semi"), ("rdrop", "semi"))
    p_values = {"rdrop_vs_baseline": {"acc": {1: 0.5, 2: 0.25}}, "semi_vs_baseline": {"acc": {1: 0.01, 2: 0.02}},
                "semi_vs_rdrop": {"acc": {1: 0.03}}}
    lines = seed_table(per_seed, [("accuracy", "acc", "{:.2f}")], p_values, ("baseline", "rdrop", "semi"), pairs)
    assert lines[0].split() == ["baseline", "R-Drop", "semi-sup.", "R-Drop-base", "p", "semi-s-base", "p",
                                "semi-s-R-Dr", "p"]
    assert lines[3].split() == ["seed", "1", "41.00", "42.00", "44.50", "+1.00", "0.5000", "+3.50", "0.0100",
                                "+2.50", "0.0300"]
    assert lines[4].split()[-2:] == ["0.0200", "+2.50"]  # no p where none was given
    assert lines[5].split() == ["mean", "±", "std", "41.50", "±", "0.71", "42.50", "±", "0.71", "45.00", "±", "0.71",
                                "+1.00", "+3.50", "+2.50"]
    # two runs: the table as it always was
    two = seed_table({1: {"baseline": {"acc": 1.0}, "rdrop": {"acc": 2.0}}}, [("accuracy", "acc", "{:.2f}")],
                     {"rdrop_vs_baseline": {"acc": {1: 0.5}}})
    assert two[0] == f"{'':22}{'baseline':>20}{'R-Drop':>20}{'delta':>10}{'p':>9}"
    assert two[3] == f"  seed {1:<16}{'1.00':>20}{'2.00':>20}{'+1.00':>10}{'0.5000':>9}"


def test_a_refused_flag_is_refused_with_what_to_do_instead(capsys):
    import argparse

    from examples.classification import demo
    from examples.common.cli import rdrop_variant_flags

    with pytest.raises(argparse.ArgumentTypeError, match="set alpha with --alpha"):
        rdrop_variant_flags("--rdrop-alpha 2")
    with pytest.raises(SystemExit):
        demo.parse_args(["--semi-flags=--unlabeled-subset other"])
    assert "--semi-flags: the demo names the unlabeled split" in capsys.readouterr().err
