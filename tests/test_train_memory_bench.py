"""The training-memory benchmark measures the recipes' own commands.

Its figures are quoted in the recipes' docs, so the commands it builds must be
the ones the recipes run, and a tiny measurement must go through fairseq's
real Trainer in half precision.
"""

import signal
import subprocess

import pytest

from benchmarks import harness, train_memory
from tests.conftest import DEVICES

TINY = {
    "translation": "--encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 "
    "--decoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 "
    "--encoder-attention-heads 2 --decoder-attention-heads 2 --max-tokens 256",
    "lm": "--decoder-layers 1 --decoder-embed-dim 32 --decoder-ffn-embed-dim 64 "
    "--decoder-input-dim 32 --decoder-output-dim 32 --decoder-attention-heads 2 "
    "--max-tokens 128 --tokens-per-sample 64",
}
CRITERIA = {
    ("translation", "baseline"): ["label_smoothed_cross_entropy"],
    ("translation", "rdrop"): ["rdrop_label_smoothed_cross_entropy", "--rdrop-alpha", "5"],
    ("translation", "upstream"): ["label_smoothed_cross_entropy_with_rdrop", "--rdrop-alpha", "5"],
    ("lm", "baseline"): None,  # the stock criterion of the model (cross_entropy / adaptive_loss)
    ("lm", "rdrop"): None,
}


def _criterion(argv):
    i = argv.index("--criterion")
    return argv[i + 1:i + 4] if argv[i + 2:i + 3] == ["--rdrop-alpha"] else argv[i + 1:i + 2]


@pytest.mark.parametrize("name", sorted(train_memory.CONFIGS))
def test_commands_are_the_recipes(name, tmp_path):
    cfg = train_memory.CONFIGS[name]
    train_memory.write_dictionaries(str(tmp_path), cfg["dicts"], 100)
    for entry in train_memory.ENTRIES[cfg["kind"]]:
        argv = train_memory.entry_command(cfg, entry, str(tmp_path))
        assert argv[0] == str(tmp_path)
        assert "--fp16" in argv and "--max-tokens" in argv
        expected = CRITERIA[cfg["kind"], entry]
        if expected:
            assert _criterion(argv) == expected
        elif entry == "rdrop":
            assert _criterion(argv)[0].startswith("rdrop_")
        else:
            assert not _criterion(argv)[0].startswith("rdrop_")
        cpu = train_memory.for_device(argv, "cpu")
        assert "--fp16" not in cpu and "--bf16" in cpu and cpu[-1] == "--cpu"
        assert train_memory.for_device(argv, "cuda") == argv


def test_option_reads_the_value_argparse_keeps():
    assert train_memory._option(["--max-tokens", "4096", "--x", "--max-tokens", "256"],
                                "--max-tokens") == 256


def test_dictionary_size(tmp_path):
    from fairseq.data import Dictionary

    train_memory.write_dictionaries(str(tmp_path), ["dict.txt"], 1000)
    assert len(Dictionary.load(str(tmp_path / "dict.txt"))) == 1000


@pytest.mark.parametrize("name", ["wmt14-en-de", "wt103-adaptive"])
def test_tiny_measurement_runs_the_trainer_in_half_precision(name, tmp_path):
    cfg = train_memory.CONFIGS[name]
    train_memory.write_dictionaries(str(tmp_path), cfg["dicts"], 300 if cfg["kind"] == "translation"
                                    else 70000)  # above the adaptive cutoffs 20000,60000
    argv = train_memory.for_device(train_memory.entry_command(cfg, "rdrop", str(tmp_path)), "cpu")
    spec = dict(kind=cfg["kind"], argv=argv + TINY[cfg["kind"]].split(), length=16, threads=1,
                device="cpu", time_updates=1)
    result = harness.run_worker("benchmarks.train_memory", spec, harness.MMAP_ENV, timeout=600)
    assert result["dtype"] == "torch.bfloat16"
    if cfg["kind"] == "translation":
        assert (result["sentences"], result["length"]) == (16, 16)
    else:
        assert (result["sentences"], result["length"]) == (2, 64)
    assert result["target_tokens"] == result["sentences"] * result["length"]
    assert 0 < result["step_bytes"] <= result["peak_bytes"]
    assert result["training_bytes"] > 0
    # one whole update of the recipe: its --update-freq micro-batches, then the extrapolation
    assert result["update_freq"] == (16 if cfg["kind"] == "translation" else 24)
    assert result["max_update"] == train_memory._option(argv, "--max-update")
    assert result["update_seconds"] > 0
    assert result["device_hours"] == pytest.approx(
        result["update_seconds"] * result["max_update"] / 3600)


@pytest.mark.parametrize("device", DEVICES)
def test_the_peak_covers_the_whole_step(device, tmp_path):
    """The stock cross_entropy keeps float32 log-probabilities of every target position:
    the measured step must hold at least those (on CUDA fairseq's Trainer resets the
    peak counter at the end of each step, which once hid the whole step)."""
    cfg = train_memory.CONFIGS["wt103-transformer"]
    vocab = 70000
    train_memory.write_dictionaries(str(tmp_path), cfg["dicts"], vocab)
    argv = train_memory.for_device(train_memory.entry_command(cfg, "baseline", str(tmp_path)), device)
    spec = dict(kind="lm", argv=argv + TINY["lm"].split(), length=None, threads=1, device=device)
    env = harness.MMAP_ENV if device == "cpu" else None
    result = harness.run_worker("benchmarks.train_memory", spec, env, timeout=600)
    assert result["warmup_steps"] >= 1
    log_probs_bytes = result["target_tokens"] * vocab * 4
    assert result["step_bytes"] >= log_probs_bytes, (result, log_probs_bytes)


@pytest.mark.parametrize("returncode, stderr, oom", [
    (-signal.SIGKILL, "", True),  # the kernel's OOM killer
    (1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", True),
    (1, "RuntimeError: DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB", True),
    (1, "ValueError: bad argument", False),
])
def test_a_worker_that_ran_out_of_memory_is_told_apart(monkeypatch, returncode, stderr, oom):
    monkeypatch.setattr(harness.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, returncode, "", stderr))
    with pytest.raises(harness.WorkerFailed) as err:
        harness.run_worker("benchmarks.train_memory", {})
    assert err.value.out_of_memory is oom


def test_an_entry_out_of_memory_is_a_row_of_the_table():
    measured = dict(params=2e8, sentences=16, length=256, training_bytes=2**34, step_bytes=2**33,
                    mem_vs_baseline=1.0)
    table = train_memory.results_table({"wmt14-en-de/len256": {"entries": {
        "baseline": measured, "upstream": {"failed": "out of memory", "returncode": -9}}}})
    assert "| wmt14-en-de/len256 | baseline | 200.0M | 16 x 256 | 16.00 | 8.00 | 1.00x |" in table
    assert "| wmt14-en-de/len256 | upstream |  |  | out of memory |  |  |" in table


def test_timed_updates_are_columns_of_the_table():
    timed = dict(params=2e8, sentences=128, length=32, training_bytes=2**33, step_bytes=2**32,
                 mem_vs_baseline=1.25, update_seconds=1.5, update_freq=16, max_update=300000,
                 device_hours=125.0, time_vs_baseline=1.9)
    table = train_memory.results_table({"wmt14-en-de/len32": {"entries": {
        "rdrop": timed, "upstream": {"failed": "out of memory", "returncode": -9}}}})
    assert "| update s | vs baseline | device-hours |" in table
    assert ("| wmt14-en-de/len32 | rdrop | 200.0M | 128 x 32 | 8.00 | 4.00 | 1.25x "
            "| 1.500 (16 x) | 1.90x | 125 (300000 updates) |") in table
    assert "| wmt14-en-de/len32 | upstream |  |  | out of memory |  |  |  |  |  |" in table


def test_results_record_the_workers_threads_and_the_command(monkeypatch, tmp_path):
    import json

    monkeypatch.setattr(harness, "REPO", str(tmp_path))
    monkeypatch.setattr(harness.sys, "argv", [str(tmp_path / "bench.py"), "--extra", "--dropout 0"])
    stem = harness.write_results("train-memory", "cpu", {"threads": 1}, "| table |")
    written = json.load(open(stem + ".json"))
    assert "1 torch threads per worker" in written["machine"], written["machine"]
    assert written["command"] == "bench.py --extra '--dropout 0'"  # runs again as written
    assert open(stem + ".md").read() == "| table |\n"
