"""Training memory per device of the recipes' full-scale commands.

For each recipe (WMT14 Transformer big, the WikiText-103 language models) this
takes the training command the recipe itself prints (``DRY_RUN=1``), builds
fairseq's real task, model, criterion and ``Trainer`` from it (mixed precision
with fairseq's optimizer wrapper: half-precision weights and gradients, float32
master weights and Adam/NAG state), and measures one ``trainer.train_step`` on
one micro-batch of ``--max-tokens`` tokens (``--update-freq`` only accumulates
into the same buffers).  Entries: the recipe's ``baseline`` and ``rdrop``
commands, and for translation ``upstream`` (fairseq's
``label_smoothed_cross_entropy_with_rdrop --rdrop-alpha 5`` on the baseline
command).

Reported: ``training_bytes`` = the peak over a step of everything training holds
(measured after warm-up steps up to the first that updates the weights, so the
optimizer state exists): on CUDA ``torch.cuda.max_memory_allocated``; on CPU the
process's peak RSS minus its RSS after the imports (see harness.py for the
method); ``step_bytes`` = that peak minus what was in use just before the step
(activations and temporaries: what R-Drop's doubled batch adds to).  An entry whose worker runs out of memory
(killed by the kernel's OOM killer, or an allocator error) is reported as such
and the other entries go on.  On CPU, ``--fp16`` is replaced by ``--bf16``: the
same two bytes per element and the same optimizer wrapper, so the tensors held
are those of an fp16 run.  What a CPU figure does not hold: the CUDA context and
cuBLAS workspaces, the caching allocator's rounding and fragmentation
(``nvidia-smi`` shows more than this), and kernels that keep different
intermediates on a GPU.

With ``--time-updates N``, also the seconds of one whole update of the recipe on
this one device (``--update-freq`` micro-batches and the optimizer step, median
of N after a warm-up update), and the device-hours of its ``--max-update``
updates at that rate: an extrapolation from a synthetic batch, without data
loading, validation, checkpoints or (with several devices) gradient
communication.

The batch is synthetic: sentences of one length (``--lengths``, each batch
``max-tokens // length`` sentences; attention memory grows with the length) of
token ids drawn from a Zipf law over the dictionary (so an adaptive softmax
sees real-text-like head/tail traffic), and a dictionary of ``vocab`` symbols
(the real size depends on the prepared data: set it with ``--vocab NAME=SIZE``).

    python -m benchmarks.train_memory                        # every recipe
    python -m benchmarks.train_memory --configs wmt14-en-de --lengths 32 256
"""

import argparse
import functools
import os
import shlex
import subprocess
import sys
import tempfile

from benchmarks import harness

# recipe script, its arguments before the run name, the dictionary files it needs
CONFIGS = {
    "wmt14-en-de": dict(kind="translation", script="examples/translation/train-wmt14.sh",
                        args=["en-de"], dicts=["dict.en.txt", "dict.de.txt"], vocab=32768),
    "wmt14-en-fr": dict(kind="translation", script="examples/translation/train-wmt14.sh",
                        args=["en-fr"], dicts=["dict.en.txt", "dict.fr.txt"], vocab=40000),
    "wt103-transformer": dict(kind="lm", script="examples/language_model/train-wikitext103.sh",
                              args=["transformer"], dicts=["dict.txt"], vocab=267744),
    "wt103-adaptive": dict(kind="lm", script="examples/language_model/train-wikitext103.sh",
                           args=["adaptive"], dicts=["dict.txt"], vocab=267744),
}
ENTRIES = {"translation": ["baseline", "rdrop", "upstream"], "lm": ["baseline", "rdrop"]}
DEFAULT_LENGTHS = {"translation": [32, 256], "lm": [None]}  # LM: --tokens-per-sample
WARMUP_STEPS_MAX = 20


# ---- the recipes' commands ---------------------------------------------------
def write_dictionaries(data_dir, files, vocab):
    """Dictionary files of ``vocab`` entries in all (fairseq adds 4 special symbols)."""
    lines = "".join(f"w{i} {10 ** 6 - i}\n" for i in range(vocab - 4))
    for name in files:
        with open(os.path.join(data_dir, name), "w") as f:
            f.write(lines)


def recipe_command(cfg, run, data_dir):
    """The fairseq-train arguments the recipe runs (``DRY_RUN=1``), data dir first."""
    return list(_dry_run(cfg["script"], tuple(cfg["args"]), run, data_dir))


@functools.lru_cache(maxsize=None)
def _dry_run(script, script_args, run, data_dir):
    env = dict(os.environ, DRY_RUN="1", DATA_BIN=data_dir, NPROC_PER_NODE="1",
               SAVE_DIR=os.path.join(data_dir, "checkpoints"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(["bash", os.path.join(harness.REPO, script), *script_args, run],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{script} {run} (DRY_RUN=1) failed:\n{proc.stderr[-2000:]}")
    argv = shlex.split(proc.stdout.strip().splitlines()[-1])
    return tuple(argv[1:])  # without the program


def entry_command(cfg, entry, data_dir):
    if entry != "upstream":
        return recipe_command(cfg, entry, data_dir)
    argv = recipe_command(cfg, "baseline", data_dir)
    i = argv.index("--criterion")
    return argv[:i + 1] + ["label_smoothed_cross_entropy_with_rdrop", "--rdrop-alpha", "5"] + argv[i + 2:]


def for_device(argv, device):
    """On CPU: ``--bf16 --cpu`` in place of ``--fp16`` (same element size)."""
    if device != "cpu":
        return list(argv)
    return [("--bf16" if a == "--fp16" else a) for a in argv] + ["--cpu"]


# ---- worker ------------------------------------------------------------------
def _option(argv, name):
    """The value of the last ``name`` in ``argv`` (the one argparse keeps)."""
    last = max(i for i, a in enumerate(argv) if a == name)
    return int(argv[last + 1])


def _zipf_tokens(shape, low, high, generator):
    import torch

    ranks = torch.arange(1, high - low + 1, dtype=torch.float64)
    draws = torch.multinomial(1.0 / ranks, int(torch.tensor(shape).prod()), replacement=True,
                              generator=generator)
    return (draws + low).view(*shape)


def _sample(kind, argv, length, dictionary, generator):
    import torch

    max_tokens = _option(argv, "--max-tokens")
    if kind == "lm":
        length = _option(argv, "--tokens-per-sample")
    bsz = max(1, max_tokens // length)
    tokens = lambda: _zipf_tokens((bsz, length), dictionary.nspecial, len(dictionary), generator)  # noqa: E731
    target = tokens()
    lengths = torch.full((bsz,), length)
    if kind == "lm":
        net_input = {"src_tokens": torch.cat([target[:, :1], target[:, :-1]], 1),
                     "src_lengths": lengths}
    else:
        target[:, -1] = dictionary.eos()
        prev = torch.cat([torch.full((bsz, 1), dictionary.eos()), target[:, :-1]], 1)
        net_input = {"src_tokens": tokens(), "src_lengths": lengths, "prev_output_tokens": prev}
    return {"id": torch.arange(bsz), "net_input": net_input, "target": target,
            "ntokens": target.numel(), "nsentences": bsz}, bsz, length


def run_entry(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    import rdrop_seq  # noqa: F401  (registers the criterions and architectures)
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.logging import metrics
    from fairseq.trainer import Trainer

    cuda = spec["device"].startswith("cuda")
    start_rss = 0 if cuda else harness.rss_bytes()
    argv = spec["argv"]
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    args.tpu = False  # fairseq 0.12 turns --bf16 into --tpu (rdrop-train does the same)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    # On CUDA fairseq's Trainer logs gb_free at the end of every step and resets CUDA's
    # peak-memory counter to do so: the measured peak would then hold only what came
    # after.  Without its CUDA environment record it leaves the counter alone.
    trainer.cuda_env = None
    dictionary = task.source_dictionary if spec["kind"] == "lm" else task.target_dictionary
    sample, bsz, length = _sample(spec["kind"], argv, spec["length"], dictionary,
                                  torch.Generator().manual_seed(0))
    metrics.reset()

    def train_step(micro_batches=1):
        # fresh dicts per micro-batch: fairseq's own R-Drop criterion rewrites net_input
        samples = [dict(sample, net_input=dict(sample["net_input"])) for _ in range(micro_batches)]
        with metrics.aggregate("train"):
            trainer.train_step(samples)

    # warm up until the optimizer has stepped once, so that its state exists before the
    # measured step (an fp16 step whose gradients overflow is skipped: the loss scale starts
    # high and halves on each overflow)
    warmup_steps = 0
    while trainer.get_num_updates() == 0:
        if warmup_steps == WARMUP_STEPS_MAX:
            raise RuntimeError(f"no optimizer step in {WARMUP_STEPS_MAX} warm-up steps")
        train_step()
        warmup_steps += 1
    result = harness.measure_step(train_step, spec["device"], "memory", warmup=0, steps=0)
    result["warmup_steps"] = warmup_steps
    result["training_bytes"] = result["peak_bytes"] - start_rss
    if spec.get("time_updates"):
        result.update(time_updates(train_step, argv, spec))
    result.update(params=sum(p.numel() for p in trainer.model.parameters()),
                  dtype=str(next(trainer.model.parameters()).dtype), sentences=bsz,
                  length=length, target_tokens=sample["ntokens"])
    return result


def time_updates(train_step, argv, spec):
    """Seconds per update of the recipe on one device: ``train_step`` of ``--update-freq``
    micro-batches and one optimizer step (median of ``time_updates`` after one warm-up
    update), and what ``--max-update`` updates take at that rate."""
    update_freq, max_update = _option(argv, "--update-freq"), _option(argv, "--max-update")
    seconds = harness.measure_step(lambda: train_step(update_freq), spec["device"], "time",
                                   warmup=1, steps=spec["time_updates"])["seconds"]
    return dict(update_seconds=seconds, update_freq=update_freq, max_update=max_update,
                device_hours=seconds * max_update / 3600)


# ---- driver ------------------------------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--entries", nargs="+", choices=["baseline", "rdrop", "upstream"],
                        help="default: every entry of the recipe")
    parser.add_argument("--lengths", nargs="+", type=int,
                        help="translation sentence lengths (default 32 256)")
    parser.add_argument("--vocab", nargs="+", default=[], metavar="CONFIG=SIZE",
                        help="dictionary size of a configuration (defaults: "
                        + ", ".join(f"{k} {v['vocab']}" for k, v in CONFIGS.items()) + ")")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--extra", default="",
                        help="more fairseq-train arguments for every entry (e.g. a smaller model)")
    parser.add_argument("--time-updates", type=int, default=0, metavar="N",
                        help="also time N whole updates of the recipe (--update-freq micro-batches "
                        "and the optimizer step, after one warm-up update) and extrapolate the "
                        "device-hours of its --max-update updates")
    parser.add_argument("--label", default="",
                        help="added to the results file name (keeps other runs of the day)")
    args = parser.parse_args()
    vocab = {k: v["vocab"] for k, v in CONFIGS.items()}
    for item in args.vocab:
        name, _, size = item.partition("=")
        if name not in CONFIGS or not size.isdigit():
            parser.error(f"--vocab {item}: expected CONFIG=SIZE with CONFIG in {list(CONFIGS)}")
        vocab[name] = int(size)

    all_results = {}
    for name in args.configs:
        cfg = CONFIGS[name]
        entries = [e for e in ENTRIES[cfg["kind"]] if not args.entries or e in args.entries]
        lengths = DEFAULT_LENGTHS[cfg["kind"]] if cfg["kind"] == "lm" else (
            args.lengths or DEFAULT_LENGTHS["translation"])
        with tempfile.TemporaryDirectory() as data_dir:
            write_dictionaries(data_dir, cfg["dicts"], vocab[name])
            commands = {e: for_device(entry_command(cfg, e, data_dir), args.device)
                        + shlex.split(args.extra) for e in entries}
            for length in lengths:
                key = name if length is None else f"{name}/len{length}"
                print(f"{key}: V={vocab[name]}, {', '.join(entries)}", flush=True)
                res = {}
                all_results[key] = dict(cfg, vocab=vocab[name], entries=res)
                for entry in entries:
                    spec = dict(kind=cfg["kind"], argv=commands[entry], length=length,
                                threads=args.threads, device=args.device,
                                time_updates=args.time_updates)
                    env = harness.MMAP_ENV if args.device == "cpu" else None
                    try:
                        res[entry] = harness.run_worker("benchmarks.train_memory", spec, env,
                                                        timeout=7200)
                    except harness.WorkerFailed as err:
                        if not err.out_of_memory:
                            raise
                        # the other entries still measure (they may need less)
                        res[entry] = {"failed": "out of memory", "returncode": err.returncode}
                    res[entry]["command"] = " ".join(shlex.quote(a) for a in commands[entry])
                    measured = {e: r for e, r in res.items() if "failed" not in r}
                    if "baseline" in measured:
                        ratios = {"mem_vs_baseline": "training_bytes"}
                        if args.time_updates:
                            ratios["time_vs_baseline"] = "update_seconds"
                        harness.add_ratios(measured, floor="baseline", ratios=ratios)
                    # written after every entry: an interrupted run keeps what it measured
                    table = results_table(all_results)
                    stem = harness.write_results(
                        "train-memory" + (f"-{args.label}" if args.label else ""), args.device,
                        dict(configs=all_results, threads=args.threads, extra=args.extra,
                             time_updates=args.time_updates), table)
                    print(table.splitlines()[-1], flush=True)
    print(table)
    harness.report_written(stem)


def results_table(all_results):
    timed = any("update_seconds" in r for res in all_results.values()
                for r in res["entries"].values())
    header = ["config", "entry", "params", "batch", "training GiB", "step GiB", "vs baseline"]
    if timed:
        header += ["update s", "vs baseline", "device-hours"]
    rows = []
    for key, res in all_results.items():
        for entry, r in res["entries"].items():
            if "failed" in r:
                rows.append([key, entry, "", "", r["failed"]] + [""] * (len(header) - 5))
                continue
            ratio = r.get("mem_vs_baseline")
            row = [key, entry, f"{r['params'] / 1e6:.1f}M", f"{r['sentences']} x {r['length']}",
                   f"{r['training_bytes'] / 2**30:.2f}", f"{r['step_bytes'] / 2**30:.2f}",
                   "" if ratio is None else f"{ratio:.2f}x"]
            if timed:
                time_ratio = r.get("time_vs_baseline")
                row += ([f"{r['update_seconds']:.3f} ({r['update_freq']} x)",
                         "" if time_ratio is None else f"{time_ratio:.2f}x",
                         f"{r['device_hours']:.0f} ({r['max_update']} updates)"]
                        if "update_seconds" in r else ["", "", ""])
            rows.append(row)
    return harness.markdown_table(rows, header)


if __name__ == "__main__":
    harness.driver_or_worker(main, run_entry)
