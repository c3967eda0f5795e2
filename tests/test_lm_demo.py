"""The language-model demo (baseline adaptive_loss vs rdrop_adaptive_loss on PTB), tiny mode."""

import functools
import json
import os

import pytest

from tests.example_helpers import run_module

DEMO = "examples.language_model.demo"

run_demo = functools.partial(run_module, DEMO, timeout=600)


def test_bad_alpha_is_refused_before_anything_runs(tmp_path):
    r = run_demo("--mode", "tiny", "--alpha", "-1", "--work-dir", tmp_path / "w", "--results-dir", tmp_path / "r")
    assert r.returncode == 2 and "--alpha must be >= 0" in r.stderr
    assert not (tmp_path / "w").exists()


def test_results_dir_inside_work_dir_is_refused(tmp_path):
    r = run_demo("--mode", "tiny", "--work-dir", tmp_path / "w", "--results-dir", tmp_path / "w" / "r")
    assert r.returncode == 2 and "--results-dir must not be inside --work-dir" in r.stderr


def test_tiny_lm_demo_two_seeds_end_to_end_resumes_a_finished_seed_and_reruns(tmp_path):
    args = ["--mode", "tiny", "--threads", "1", "--work-dir", tmp_path / "work", "--results-dir", tmp_path / "res"]
    before = run_demo(*args, "--status")  # reads only: prepares and trains nothing
    assert before.returncode == 0, before.stderr[-3000:]
    assert "seed 1" in before.stdout and "seed 2" in before.stdout
    assert "baseline  not started" in before.stdout and "rdrop     not started" in before.stdout
    assert not (tmp_path / "work").exists() and not (tmp_path / "res").exists()

    # one run of one seed on its own first (--run, --seeds): it trains and evaluates that run, writes no results
    alone = run_demo(*args, "--run", "rdrop", "--seeds", "1")
    assert alone.returncode == 0, f"demo failed:\n{alone.stdout[-4000:]}\n{alone.stderr[-4000:]}"
    assert "train rdrop seed 1: starting" in alone.stdout and "eval-lm rdrop seed 1:" in alone.stdout
    assert "train baseline" not in alone.stdout and "no results file written" in alone.stdout
    assert not (tmp_path / "res" / "tiny.json").exists()
    assert not (tmp_path / "work" / "baseline-seed1").exists() and not (tmp_path / "work" / "rdrop-seed2").exists()

    # both seeds, two processes at once: the finished run is found done, the other three train
    r = run_demo(*args, "--jobs", "2")
    assert r.returncode == 0, f"demo failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "binarize: done already" in r.stdout and "training 4 runs, 2 at once" in r.stdout
    logs = {(run, seed): (tmp_path / "work" / "logs" / f"{run}-seed{seed}.log").read_text()
            for run in ("baseline", "rdrop") for seed in (1, 2)}
    assert "train rdrop seed 1: done already" in logs["rdrop", 1] and "starting" not in logs["rdrop", 1]
    for key in (("baseline", 1), ("baseline", 2), ("rdrop", 2)):
        assert f"train {key[0]} seed {key[1]}: starting" in logs[key] and f"eval-lm {key[0]} seed {key[1]}:" in logs[key]
    assert "test ppl" in r.stdout and "mean ± std" in r.stdout

    res = json.loads((tmp_path / "res" / "tiny.json").read_text())
    assert {"seeds", "per_seed", "baseline", "rdrop", "ppl_reduction_pct", "p_values", "significance",
            "stopped_early", "commit", "command", "date", "machine"} <= set(res)
    assert res["seeds"] == [1, 2]
    for stat in ("test_ppl_mean", "test_ppl_std", "best_valid_ppl_mean"):
        assert stat in res["baseline"] and stat in res["rdrop"]
    reductions = []
    for seed, runs in res["per_seed"].items():
        for run in ("baseline", "rdrop"):
            rec = runs[run]
            assert {"test_ppl", "best_valid_ppl", "best_epoch", "updates", "seconds", "stopped_early",
                    "history"} <= set(rec)
            assert rec["epochs"] == 1 and rec["updates"] > 0 and rec["stopped_early"] is False
            assert 1 < rec["test_ppl"] < 1e5 and rec["best_valid_ppl"] > 1
            assert "--context-window" in rec["eval_command"] and "--output-word-probs" in rec["eval_command"]
        # the bootstrap's perplexities are eval-lm's, from the per-token log-probabilities
        boot = runs["comparison"]["bootstrap"]
        assert boot["baseline_ppl"] == pytest.approx(runs["baseline"]["test_ppl"], rel=1e-3)
        assert boot["system_ppl"] == pytest.approx(runs["rdrop"]["test_ppl"], rel=1e-3)
        assert 0 < res["p_values"]["test_ppl"][seed] <= 1
        assert "--criterion adaptive_loss" in runs["baseline"]["train_command"]
        assert "--criterion rdrop_adaptive_loss --rdrop-alpha 1.0" in runs["rdrop"]["train_command"]
        base, rdrop = runs["baseline"]["test_ppl"], runs["rdrop"]["test_ppl"]
        reductions.append(100 * (base - rdrop) / base)
    assert res["ppl_reduction_pct"] == pytest.approx(sum(reductions) / 2, abs=0.011)
    # the R-Drop run of seed 1 trained in the first invocation, alone: one segment
    assert len(res["per_seed"]["1"]["rdrop"]["history"]) == 1
    assert res["command"].startswith("python -m examples.language_model.demo --mode tiny")
    assert (tmp_path / "res" / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    status = run_demo(*args, "--status")
    assert status.returncode == 0, status.stderr[-3000:]
    for run in ("baseline", "rdrop"):
        rec = res["per_seed"]["2"][run]
        assert f"{run:9} finished: 1 epoch, {rec['updates']} updates" in status.stdout
        assert f"best valid ppl {rec['best_valid_ppl']:.2f} at epoch 1" in status.stdout

    again = run_demo(*args, "--jobs", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("binarize", "train baseline seed 1", "train rdrop seed 2", "eval-lm rdrop seed 1"):
        assert f"{stage}: done already" in again.stdout, stage
    after = json.loads((tmp_path / "res" / "tiny.json").read_text())
    assert after["per_seed"]["2"]["rdrop"]["test_ppl"] == res["per_seed"]["2"]["rdrop"]["test_ppl"]
    assert any(n.startswith("tiny.") and n.endswith(".json") and n != "tiny.json"
               for n in os.listdir(tmp_path / "res"))


# --- your own text (--text-dir) ------------------------------------------------


def write_text_dir(d, sizes):
    """Real English text the LM demo has not seen: the snapshot's Debian package descriptions."""
    from examples.translation import debian_snapshot

    splits = debian_snapshot.load_snapshot()
    d.mkdir()
    for split, n in sizes.items():
        (d / f"{split}.txt").write_text("".join(en + "\n" for _, en in splits[split][:n]), encoding="utf-8")


def test_text_dir_errors_name_the_file_before_anything_runs(tmp_path):
    out = ["--work-dir", tmp_path / "w", "--results-dir", tmp_path / "r"]
    r = run_demo("--mode", "tiny", "--text-dir", tmp_path / "none", *out)
    assert r.returncode == 2 and "--text-dir is not a directory" in r.stderr
    write_text_dir(tmp_path / "mine", {"train": 20, "valid": 5})
    r = run_demo("--mode", "tiny", "--text-dir", tmp_path / "mine", *out)
    assert r.returncode == 2 and "missing input file:" in r.stderr and "test.txt" in r.stderr
    assert not (tmp_path / "w").exists()
    (tmp_path / "mine" / "test.txt").write_text("\n  \n", encoding="utf-8")
    r = run_demo("--mode", "tiny", "--text-dir", tmp_path / "mine", *out)
    assert r.returncode == 2 and "test.txt has no text" in r.stderr
    assert not [n for n in os.listdir(tmp_path / "w") if n.startswith(("baseline", "rdrop"))] \
        if (tmp_path / "w").exists() else True


def test_text_dir_trains_and_scores_that_text(tmp_path):
    pytest.importorskip("fairseq")
    write_text_dir(tmp_path / "Debian text", {"train": 300, "valid": 40, "test": 40})
    args = ["--mode", "tiny", "--text-dir", tmp_path / "Debian text", "--threads", "1", "--results-dir", tmp_path / "r"]
    r = run_demo(*args, "--run", "rdrop", "--seeds", "1", "--work-dir", tmp_path / "w")
    assert r.returncode == 0, f"demo failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "text: reading" in r.stdout and "train 300/" in r.stdout and "valid 40/" in r.stdout
    vocab = json.loads((tmp_path / "w" / "data" / "data-bin" / ".stage.json").read_text())["vocab_size"]
    assert 8 < vocab <= 6000  # a few thousand words: the demo scales the cutoffs to fit
    cutoffs = f"{vocab // 5},{vocab * 3 // 5}"
    assert f"--adaptive-input-cutoff {cutoffs} --adaptive-softmax-cutoff {cutoffs}" in r.stdout
    assert "rdrop seed 1: test perplexity" in r.stdout  # eval-lm scored every test token (the demo checks)

    default = run_demo(*args, "--status")  # the default work dir carries the text dir's name
    assert default.returncode == 0 and "work/tiny-Debian_text" in default.stdout
