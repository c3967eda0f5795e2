"""The language-model demo (baseline adaptive_loss vs rdrop_adaptive_loss on PTB), tiny mode."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "examples", "language_model", "demo.py")


def run_demo(*args, timeout=600):
    return subprocess.run(
        [sys.executable, DEMO, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_bad_alpha_is_refused_before_anything_runs(tmp_path):
    r = run_demo("--mode", "tiny", "--alpha", "-1", "--work-dir", tmp_path / "w", "--results-dir", tmp_path / "r")
    assert r.returncode == 2 and "--alpha must be >= 0" in r.stderr
    assert not (tmp_path / "w").exists()


def test_results_dir_inside_work_dir_is_refused(tmp_path):
    r = run_demo("--mode", "tiny", "--work-dir", tmp_path / "w", "--results-dir", tmp_path / "w" / "r")
    assert r.returncode == 2 and "--results-dir must not be inside --work-dir" in r.stderr


def test_tiny_lm_demo_end_to_end_and_rerun(tmp_path):
    args = ["--mode", "tiny", "--threads", "1", "--work-dir", tmp_path / "work", "--results-dir", tmp_path / "res"]
    before = run_demo(*args, "--status")  # reads only: prepares and trains nothing
    assert before.returncode == 0, before.stderr[-3000:]
    assert "baseline  not started" in before.stdout and "rdrop     not started" in before.stdout
    assert not (tmp_path / "work").exists() and not (tmp_path / "res").exists()

    # one run on its own first (--run): it trains and evaluates that run and writes no results
    alone = run_demo(*args, "--run", "rdrop")
    assert alone.returncode == 0, f"demo failed:\n{alone.stdout[-4000:]}\n{alone.stderr[-4000:]}"
    assert "train rdrop: starting" in alone.stdout and "eval-lm rdrop:" in alone.stdout
    assert "train baseline" not in alone.stdout and "no results file written" in alone.stdout
    assert not (tmp_path / "res" / "tiny.json").exists()
    assert not (tmp_path / "work" / "baseline").exists()

    r = run_demo(*args)  # trains the baseline, finds the R-Drop run done, writes the results
    assert r.returncode == 0, f"demo failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    for stage in ("binarize: done already", "train baseline: starting", "train rdrop: done already",
                  "eval-lm baseline:", "eval-lm rdrop:"):
        assert stage in r.stdout, stage
    assert "test ppl" in r.stdout and "delta" in r.stdout

    res = json.loads((tmp_path / "res" / "tiny.json").read_text())
    assert {"baseline", "rdrop", "ppl_reduction_pct", "command", "date", "machine"} <= set(res)
    for run in ("baseline", "rdrop"):
        assert {"test_ppl", "valid_ppl", "updates", "seconds"} <= set(res[run])
        assert res[run]["epochs"] == 1 and res[run]["updates"] > 0
        assert 1 < res[run]["test_ppl"] < 1e5 and res[run]["valid_ppl"] > 1
    base, rdrop = res["baseline"]["test_ppl"], res["rdrop"]["test_ppl"]
    assert res["ppl_reduction_pct"] == pytest.approx(100 * (base - rdrop) / base, abs=0.011)
    assert "--criterion adaptive_loss" in res["baseline"]["train_command"]
    assert "--criterion rdrop_adaptive_loss --rdrop-alpha 1.0" in res["rdrop"]["train_command"]
    assert "--context-window" in res["rdrop"]["eval_command"]
    assert res["command"].startswith("python examples/language_model/demo.py --mode tiny")
    assert (tmp_path / "res" / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    status = run_demo(*args, "--status")
    assert status.returncode == 0, status.stderr[-3000:]
    for run in ("baseline", "rdrop"):
        assert f"{run:9} finished: 1 epoch, {res[run]['updates']} updates" in status.stdout
        assert f"best valid ppl {res[run]['valid_ppl']:.2f} at epoch 1" in status.stdout
    row = [line.split() for line in status.stdout.splitlines() if line.split()[:1] == ["1"]]
    base_ppl, rdrop_ppl = float(row[0][1]), float(row[0][2])
    assert (base_ppl, rdrop_ppl) == (round(res["baseline"]["valid_ppl"], 2), round(res["rdrop"]["valid_ppl"], 2))

    again = run_demo(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("binarize", "train baseline", "train rdrop", "eval-lm rdrop"):
        assert f"{stage}: done already" in again.stdout, stage
    after = json.loads((tmp_path / "res" / "tiny.json").read_text())
    assert after["rdrop"]["test_ppl"] == res["rdrop"]["test_ppl"]
    assert any(n.startswith("tiny.") and n.endswith(".json") and n != "tiny.json"
               for n in os.listdir(tmp_path / "res"))


# --- your own text (--text-dir) ------------------------------------------------


def write_text_dir(d, sizes):
    """Real English text the LM demo has not seen: the snapshot's Debian package descriptions."""
    sys.path.insert(0, os.path.join(REPO, "examples", "translation"))
    import debian_corpus as dc

    splits = dc.load_snapshot()
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
    assert not (tmp_path / "w" / "baseline").exists() and not (tmp_path / "w" / "rdrop").exists()


def test_text_dir_trains_and_scores_that_text(tmp_path):
    pytest.importorskip("fairseq")
    write_text_dir(tmp_path / "Debian text", {"train": 300, "valid": 40, "test": 40})
    args = ["--mode", "tiny", "--text-dir", tmp_path / "Debian text", "--threads", "1", "--results-dir", tmp_path / "r"]
    r = run_demo(*args, "--run", "rdrop", "--work-dir", tmp_path / "w")
    assert r.returncode == 0, f"demo failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "text: reading" in r.stdout and "train 300/" in r.stdout and "valid 40/" in r.stdout
    vocab = json.loads((tmp_path / "w" / "data" / "data-bin" / ".stage.json").read_text())["vocab_size"]
    assert 8 < vocab <= 6000  # a few thousand words: the demo scales the cutoffs to fit
    cutoffs = f"{vocab // 5},{vocab * 3 // 5}"
    assert f"--adaptive-input-cutoff {cutoffs} --adaptive-softmax-cutoff {cutoffs}" in r.stdout
    assert "rdrop: test perplexity" in r.stdout  # eval-lm scored every test token (the demo checks)

    default = run_demo(*args, "--status")  # the default work dir carries the text dir's name
    assert default.returncode == 0 and "work/tiny-Debian_text" in default.stdout
