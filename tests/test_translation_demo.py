"""The translation demo end to end (``--mode tiny``) and its data preparation."""

import json
import os
import subprocess
import sys

import pytest

from examples.translation import prepare as prep
from tests.example_helpers import REPO, run_module

HERE = os.path.join(REPO, "examples", "translation")
DEMO = "examples.translation.demo"
RUN_KEYS = {"test_bleu", "test_chrf", "best_valid", "selected_by", "best_epoch", "valid_bleu_at_best",
            "valid_loss_at_best", "updates", "seconds",
            "epochs", "stopped_early", "history", "curve", "train_command", "generate_command"}


def run_demo(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return run_module(DEMO, *args, timeout=timeout, env=env)


# --- preparation: bad input ----------------------------------------------------


def write_split_files(d, n=3, skew=None):
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            k = n + 1 if (split, lang) == skew else n
            (d / f"{split}.{lang}").write_text("".join(f"{split} {lang} {i}\n" for i in range(k)))


def test_misaligned_text_files_name_the_file(tmp_path):
    write_split_files(tmp_path / "text", skew=("valid", "en"))
    with pytest.raises(prep.PrepareError, match=r"misaligned input: .*valid\.en has 4 lines but .*valid\.de has 3"):
        prep.check_aligned(str(tmp_path / "text"))
    r = subprocess.run(
        [sys.executable, "-m", "examples.translation.prepare", "--work-dir", str(tmp_path / "w"),
         "--text-dir", str(tmp_path / "text")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 2 and "valid.en has 4 lines" in r.stderr
    assert not (tmp_path / "w" / "corpus").exists()


def test_missing_text_file_is_named(tmp_path):
    write_split_files(tmp_path / "text")
    os.remove(tmp_path / "text" / "test.de")
    with pytest.raises(prep.PrepareError, match=r"missing input file: .*test\.de"):
        prep.check_aligned(str(tmp_path / "text"))


def test_missing_snapshot_is_named(tmp_path):
    with pytest.raises(prep.PrepareError, match=r"corpus snapshot not found: .*nope\.tsv\.xz"):
        prep.stage_corpus(str(tmp_path), snapshot=str(tmp_path / "nope.tsv.xz"))


def test_dir_stage_is_atomic_and_skips_when_done(tmp_path, capsys):
    out = str(tmp_path / "stage")
    calls = []

    def build(tmp):
        calls.append(tmp)
        with open(os.path.join(tmp, "x"), "w") as f:
            f.write("1")

    prep.dir_stage("s", out, "k1", build)
    prep.dir_stage("s", out, "k1", build)
    assert len(calls) == 1 and "s: done already" in capsys.readouterr().out

    def broken(tmp):
        with open(os.path.join(tmp, "x"), "w") as f:
            f.write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        prep.dir_stage("s", out, "k2", broken)
    assert open(os.path.join(out, "x")).read() == "1"  # the finished output survives
    assert sorted(os.listdir(tmp_path)) == ["stage"]  # no temp dir left behind
    prep.dir_stage("s", out, "k2", build)  # new inputs: rebuilt
    assert len(calls) == 2


# --- the demo -------------------------------------------------------------------


def test_unknown_mode_is_refused_before_anything_runs(tmp_path):
    r = run_demo("--mode", "huge", "--work-dir", tmp_path / "w", "--results-dir", tmp_path / "r")
    assert r.returncode == 2 and "invalid choice: 'huge'" in r.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()


def test_bad_alpha_is_refused_before_training(tmp_path):
    r = run_demo("--mode", "tiny", "--alpha", "-1", "--work-dir", tmp_path / "w", "--results-dir", tmp_path / "r")
    assert r.returncode == 2 and "--alpha must be >= 0" in r.stderr
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("fairseq")
    base = tmp_path_factory.mktemp("demo")
    r = run_demo("--mode", "tiny", "--threads", "1", "--jobs", "2", "--work-dir", base / "work",
                 "--results-dir", base / "results")
    assert r.returncode == 0, f"demo failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return base, r


def test_tiny_demo_end_to_end_with_two_seeds(tiny_run):
    base, r = tiny_run
    out = r.stdout
    for stage in ("corpus:", "slice:", "spm:", "encode:", "binarize:", "training 4 runs, 2 at once (seeds 1,2)"):
        assert stage in out, stage
    for run in ("baseline", "rdrop"):
        for seed in (1, 2):
            assert f"{run} seed {seed}: started" in out and f"{run} seed {seed}: done" in out
            log = (base / "work" / "logs" / f"{run}-seed{seed}.log").read_text()
            assert f"train {run} seed {seed}: starting" in log and f"generate {run} seed {seed}:" in log
    assert "test BLEU" in out and "mean ± std" in out and "paired bootstrap" in out

    res = json.loads((base / "results" / "tiny.json").read_text())
    assert res["seeds"] == [1, 2] and set(res["per_seed"]) == {"1", "2"}
    for key in ("test_bleu", "test_chrf", "best_valid"):
        for stat in ("mean", "std"):
            assert f"{key}_{stat}" in res["baseline"] and f"{key}_{stat}" in res["rdrop"]
    for seed, runs in res["per_seed"].items():
        for run in ("baseline", "rdrop"):
            rec = runs[run]
            assert RUN_KEYS <= set(rec), (seed, run)
            assert rec["epochs"] == 1 and rec["updates"] > 0 and rec["stopped_early"] is False
            assert rec["selected_by"] == "valid_bleu" and rec["best_valid"] == rec["valid_bleu_at_best"]
            assert 0 <= rec["test_bleu"] <= 100 and 0 <= rec["test_chrf"] <= 100
            assert f"--seed {seed} " in rec["train_command"] and f"--seed {seed}" in rec["generate_command"]
            assert rec["history"] and rec["history"][-1]["end"] == "finished" and rec["history"][-1]["threads"] == 1
        assert "--criterion label_smoothed_cross_entropy" in runs["baseline"]["train_command"]
        assert "--criterion rdrop_label_smoothed_cross_entropy --rdrop-alpha 5.0" in runs["rdrop"]["train_command"]
        assert 0 < res["p_values"]["test_bleu"][seed] <= 1 and 0 < res["p_values"]["test_chrf"][seed] <= 1
        assert res["stopped_early"][seed] == {"baseline": False, "rdrop": False}
    deltas = [runs["rdrop"]["test_bleu"] - runs["baseline"]["test_bleu"] for runs in res["per_seed"].values()]
    assert res["delta_bleu"] == pytest.approx(sum(deltas) / 2, abs=0.011)
    assert res["significance"]["resamples"] == 1000 and "sacrebleu" in res["significance"]["test"]
    assert res["command"].startswith("python -m examples.translation.demo --mode tiny")
    assert res["commit"] and res["machine"]["jobs"] == 2
    png = base / "results" / "tiny.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the test set was decoded completely
    n_test = len((base / "work" / "data" / "text" / "test.en").read_text().splitlines())
    gen = (base / "work" / "rdrop-seed2" / "test" / "generate-test.txt").read_text()
    assert sum(line.startswith("H-") for line in gen.splitlines()) == n_test


def test_tiny_demo_rerun_skips_work_and_keeps_old_results(tiny_run):
    base, _ = tiny_run
    before = json.loads((base / "results" / "tiny.json").read_text())
    r = run_demo("--mode", "tiny", "--threads", "1", "--jobs", "1", "--work-dir", base / "work",
                 "--results-dir", base / "results")
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("binarize", "train baseline seed 1", "train rdrop seed 2", "generate rdrop seed 1"):
        assert f"{stage}: done already" in r.stdout
    after = json.loads((base / "results" / "tiny.json").read_text())
    assert after["per_seed"]["1"]["baseline"]["test_bleu"] == before["per_seed"]["1"]["baseline"]["test_bleu"]
    kept = [n for n in os.listdir(base / "results") if n.startswith("tiny.") and n not in ("tiny.json", "tiny.png")]
    assert any(n.endswith(".json") for n in kept) and any(n.endswith(".png") for n in kept)


# --- your own text (--text-dir) ------------------------------------------------


def export_pairs(d, sizes):
    """Real pairs from the shipped snapshot, as line-aligned {split}.{de,en} files."""
    from examples.translation import debian_snapshot

    splits = debian_snapshot.load_snapshot()
    debian_snapshot.export_plain({split: splits[split][:n] for split, n in sizes.items()}, str(d))


def test_text_dir_names_the_work_dir_and_results():
    from examples.common.naming import results_stem
    from examples.translation import demo

    args = demo.parse_args(["--mode", "medium", "--text-dir", "some/where/My Corpus", "--alpha", "1"])
    assert args.work_dir == os.path.join(HERE, "work", "medium-My_Corpus")
    assert results_stem(args) == "medium-My_Corpus-alpha1"
    assert results_stem(demo.parse_args(["--mode", "medium"])) == "medium"


def test_text_dir_is_checked_and_excludes_apt(tmp_path):
    r = run_demo("--mode", "tiny", "--text-dir", tmp_path / "none", "--work-dir", tmp_path / "w",
                 "--results-dir", tmp_path / "r")
    assert r.returncode == 2 and "--text-dir is not a directory" in r.stderr
    assert not (tmp_path / "w").exists()
    r = run_demo("--mode", "tiny", "--text-dir", tmp_path, "--from-apt")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_text_dir_trains_on_that_text(tmp_path):
    pytest.importorskip("fairseq")
    export_pairs(tmp_path / "mine", {"train": 250, "valid": 30, "test": 30})
    r = run_demo("--mode", "tiny", "--text-dir", tmp_path / "mine", "--run", "baseline", "--seeds", "1", "--threads", "1",
                 "--work-dir", tmp_path / "w", "--results-dir", tmp_path / "r")
    assert r.returncode == 0, f"demo failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "corpus: copying" in r.stdout and "pairs: train 250, valid 30, test 30" in r.stdout
    assert "train baseline seed 1: starting" in r.stdout and "baseline seed 1: test BLEU" in r.stdout
