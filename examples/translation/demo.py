#!/usr/bin/env python3
"""R-Drop vs. a stock baseline on German->English Debian package descriptions.

Trains the same small transformer twice for every seed, with the same settings:

* baseline: fairseq's stock ``--criterion label_smoothed_cross_entropy``;
* R-Drop:   ``--criterion rdrop_label_smoothed_cross_entropy --rdrop-alpha A``
            from this repository's plugin (``--user-dir rdrop_seq``).

A validation metric, the mode's, picks each run's checkpoint and stops it
(``--patience``): the label-smoothed loss in the quick mode, BLEU (greedy,
``--eval-bleu``) otherwise.  The test set is then decoded with
``fairseq-generate`` (beam 5), sentencepiece is removed and sacrebleu scores
BLEU and chrF.  Over the seeds the demo prints each seed's figures, their mean
and standard deviation, and for each seed the p-values of sacrebleu's paired
bootstrap resampling test (1000 resamples) between the two runs' outputs.

The runs of all seeds train as separate processes, ``--jobs`` at once (by
default one per CPU core, one thread each); ``--seeds 1,2,3`` picks the seeds.

Modes:

* ``quick`` (default, 2 seeds): a 2,000-pair slice with a 2,000-piece
  sentencepiece vocabulary, a 2-layer 128-dim transformer, early stopping on
  validation loss (patience 2, at most 80 epochs), 300 validation and 1,000 test
  pairs; each criterion at its own validation-best settings: the baseline at
  dropout 0.3, R-Drop at dropout 0.2 and α = 5.  The slice is small so that the
  baseline overfits within minutes; every setting was chosen on validation
  (RESULTS.md).
* ``medium`` (3 seeds): the quick mode's model and schedule (patience 2, at
  most 80 epochs) on a 5,000-pair slice with a 4,000-piece vocabulary, 1,000
  validation pairs and the whole 2,000-pair test set; each criterion at its own
  validation-best settings: the baseline at dropout 0.3, R-Drop at dropout 0.2
  and α = 5 (chosen on validation, RESULTS.md); about 1.5 hours on 2 CPU cores.
* ``full`` (3 seeds; ``--seeds`` changes that): the whole corpus, a 3-layer
  256-dim transformer, early stopping on validation BLEU (``--patience``)
  within the same large epoch budget for both runs.  Use a GPU.
* ``tiny`` (2 seeds): a few hundred pairs, one epoch each, a tiny model (for tests).

Everything is written under ``examples/translation/work/<mode>/`` (ignored by
git; each run in ``<run>[-settings]-seed<S>/``, each process's output in
``logs/``); the results go to ``examples/translation/results/<name>.json`` and
``<name>.png``, where ``<name>`` is the mode plus every setting that differs
from the mode's (``-<text dir>``, ``-dropout<P>``, ``-limit<N>``, ``-beam<N>``,
``-epochs<N>``, ``-patience<N>``, ``-alpha<A>``, ``-seeds<S>_<S>``).
Re-running skips finished stages (data preparation, finished training runs,
decoding) and resumes an interrupted training run; a larger ``--max-epoch``
continues finished runs that used up their budget (from their last
checkpoint; runs that stopped early stay as they are).  Earlier results files
are kept (renamed with their date), never deleted.

Usage::

    python -m examples.translation.demo                 # quick
    python -m examples.translation.demo --mode full

    # one run of one seed on its own (no results file; the full command later finds it done):
    python -m examples.translation.demo --mode medium --run rdrop --seeds 2

    # your own German->English text: {train,valid,test}.{de,en}, line-aligned
    # (work/<mode>-<dir name>/, results/<mode>-<dir name>.json):
    python -m examples.translation.demo --mode medium --text-dir path/to/corpus

    # where the runs stand (per-epoch validation values of both), also while they train:
    python -m examples.translation.demo --mode medium --status
"""

# Over 300 lines because the docstring above is the demo's manual (its --help) and MODES holds the
# per-mode settings; the task's own code is about 200 lines
# (the test set's decoding and scoring are decode.py's).

import argparse
import json
import os
import sys

from examples.common.base import USER_DIR, DemoError, check_fairseq, device_flags, flags, rel, say, train_run_flags
from examples.common.cli import (
    rdrop_run_flags, chosen_settings,
    check_demo_args, demo_parser, parse_demo_args, text_dir_name, text_dir_source, train_flags,
)
from examples.common.driver import DemoTask, run_demo
from examples.common.fairseq_log import checkpoint_epoch
from examples.common.naming import run_dir, run_dropout
from examples.common.report import TRAINING_MEAN_KEYS, TRAINING_ROWS
from examples.common.stages import fairseq_command
from examples.common.stats import paired_bleu_test
from examples.common.training import data_key, train_run, training_record
from examples.translation import debian_corpus as dc
from examples.translation import debian_snapshot, decode
from examples.translation import prepare as prep

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))

RDROP_CRITERION = "rdrop_label_smoothed_cross_entropy"
DROPOUT = 0.3  # both runs, every mode but those that set their own "dropout" (--dropout overrides it)
VALID_METRICS = ("loss", "nll_loss", "ppl", "bleu", "accuracy")
DEFAULT_BEAM = 5  # for the test set; validation BLEU decodes greedily (the mode's eval_beam)



def transformer(layers, dim, ffn_dim, heads):
    """fairseq-train flags of an encoder-decoder with the same size on both sides."""
    return {
        f"{side}-{key}": value
        for key, value in (("layers", layers), ("embed-dim", dim), ("ffn-embed-dim", ffn_dim),
                           ("attention-heads", heads))
        for side in ("encoder", "decoder")
    }


# The quick and medium modes' model, schedule and stopping rule, chosen on validation
# (RESULTS.md, "Choosing the quick mode"): validation loss picks the checkpoint and stops the runs
# (no BLEU decoding each epoch); the epoch budget, 80, leaves room for R-Drop at its own settings
# to stop early.  Each mode's dropout and α come from its own search (*_CHOSEN below).
SMALL = {
    "model": transformer(2, 128, 512, 4),
    "train": {"lr": "3e-3", "warmup-updates": 100, "max-tokens": 2048, "max-epoch": 80, "patience": 2},
    "select": "loss",
    "eval_beam": 1,
    "max_len_b": 10,
}
# The search rows the quick mode's settings come from (RESULTS.md, "Each criterion at its own
# settings"): each criterion's best validation loss, seed 1, among the grids searched.
QUICK_CHOSEN = {
    "search": "examples/translation/results/search.jsonl",
    "baseline": {"dropout": 0.3, "valid_loss": 6.338, "among": {"dropout": [0.1, 0.2, 0.3, 0.4]}},
    "rdrop": {"dropout": 0.2, "alpha": 5.0, "valid_loss": 5.821,
              "among": {"dropout": [0.1, 0.2, 0.3], "alpha": [1.0, 2.0, 5.0, 10.0]}},
    "seed": 1,
}
# The search rows the medium mode's settings come from (RESULTS.md, "Each criterion at its own
# settings: the medium mode's search"): seed 1, validation only, epoch budget 80.
MEDIUM_CHOSEN = {
    "search": "examples/translation/results/search.jsonl",
    "baseline": {"dropout": 0.3, "valid_loss": 6.135, "among": {"dropout": [0.1, 0.2, 0.3, 0.4]}},
    "rdrop": {"dropout": 0.2, "alpha": 5.0, "valid_loss": 5.627,
              "among": {"dropout": [0.1, 0.2, 0.3], "alpha": [1.0, 2.0, 5.0, 10.0]}},
    "seed": 1,
}
# Per-mode settings.  "data" goes to prepare.prepare(); "model" and "train"
# are fairseq-train flags shared by both runs.
MODES = {
    "tiny": {
        "data": {"limit": 300, "valid_limit": 40, "test_limit": 40, "vocab_size": 400},
        "model": transformer(1, 32, 64, 2),
        "train": {"lr": "1e-3", "warmup-updates": 10, "max-tokens": 2048, "max-epoch": 1},
        "eval_beam": 1,
        "max_len_b": 20,
        "seeds": (1, 2),
    },
    # chosen on validation (RESULTS.md, "Choosing the quick mode"): a slice small enough that the
    # baseline overfits within minutes; each criterion at its own validation-best dropout and α
    # (RESULTS.md, "Each criterion at its own settings")
    "quick": {
        "data": {"limit": 2000, "valid_limit": 300, "test_limit": 1000, "vocab_size": 2000},
        **SMALL,
        **chosen_settings(QUICK_CHOSEN),
        "seeds": (1, 2),
    },
    # chosen on validation (RESULTS.md, "Choosing the medium mode"): the quick mode's model and
    # schedule on 2.5 times the data, the whole test set; each criterion at its own
    # validation-best dropout and α (RESULTS.md, "Each criterion at its own settings: the medium
    # mode's search"; R-Drop's best search row trained 62 of its 80 epochs)
    "medium": {
        "data": {"limit": 5000, "valid_limit": 1000, "test_limit": None, "vocab_size": 4000},
        **SMALL,
        **chosen_settings(MEDIUM_CHOSEN),
        "seeds": (1, 2, 3),
    },
    "full": {
        "data": {"limit": None, "valid_limit": None, "test_limit": None, "vocab_size": 8000},
        "model": transformer(3, 256, 1024, 4),
        "train": {"lr": "1e-3", "warmup-updates": 1000, "max-tokens": 4096, "max-epoch": 200, "patience": 10},
        "eval_beam": 5,
        "max_len_b": 10,
        "seeds": (1, 2, 3),
    },
}  # fmt: skip


# ---------------------------------------------------------------------------
# checks before anything runs


def check_setup(args):
    """Refuse bad input before any data preparation or training."""
    check_demo_args(args)
    if args.limit is not None and args.limit < 10:
        raise DemoError(f"--limit must be >= 10, got {args.limit}")
    if args.text_dir is not None:
        if not os.path.isdir(args.text_dir):
            raise DemoError(f"--text-dir is not a directory: {args.text_dir}")
    elif not args.from_apt and not os.path.exists(args.snapshot):
        raise DemoError(f"corpus snapshot not found: {args.snapshot} (use --from-apt to rebuild it)")
    if not os.path.isdir(USER_DIR):
        raise DemoError(f"plugin directory not found: {USER_DIR}")
    check_fairseq(args, RDROP_CRITERION)


# ---------------------------------------------------------------------------
# training


def selected_by(setting):
    """The validation metric that picks the checkpoint and stops the run: ``bleu`` (the default)
    or ``loss`` (the label-smoothed loss, fairseq's own default)."""
    return setting.get("select", "bleu")


def train_command(args, setting, data_bin, save_dir, run, seed=None):
    """``seed``: default the first of ``--seeds``."""
    seed = args.seeds[0] if seed is None else seed
    eval_args = {"beam": setting["eval_beam"], "max_len_a": 1.2, "max_len_b": setting["max_len_b"]}
    cmd = fairseq_command("train") + [data_bin, "--task", "translation", "--arch", "transformer"]
    cmd += flags(setting["model"])
    cmd += [
        "--share-all-embeddings", "--dropout", f"{run_dropout(args, run):g}",
        "--weight-decay", "0.0001", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "0.0",
        "--lr-scheduler", "inverse_sqrt",
        "--label-smoothing", "0.1", "--report-accuracy",
        "--no-epoch-checkpoints",
    ]  # fmt: skip
    cmd += train_run_flags(save_dir, seed)
    if selected_by(setting) == "bleu":  # validation BLEU (greedy) every epoch picks the checkpoint
        cmd += ["--eval-bleu", "--eval-bleu-args", json.dumps(eval_args),
                "--eval-bleu-detok", "space", "--eval-bleu-remove-bpe", "sentencepiece",
                "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"]
    cmd += train_flags(args, setting)
    if run == "rdrop":
        cmd += rdrop_run_flags(args, RDROP_CRITERION)
    else:
        cmd += ["--criterion", "label_smoothed_cross_entropy"]
    return cmd + device_flags()


# ---------------------------------------------------------------------------
# one run of one seed, and the comparison of a seed's two runs


def run_one(args, data, run, seed):
    """Train (or find trained), decode and score ``run`` of ``seed``; its per-seed record."""
    setting = MODES[args.mode]
    save_dir = run_dir(args, run, seed)
    cmd = train_command(args, setting, data["data_bin"], save_dir, run, seed)
    info = train_run(cmd, save_dir, f"{run} seed {seed}", args.threads, VALID_METRICS, data=data["key"])
    gen, gen_command = decode.generate(save_dir, data["data_bin"], beam(args), setting["max_len_b"], seed,
                                       args.threads, f"{run} seed {seed}")
    scores = decode.score(decode.read_hypotheses(gen, len(data["refs"])), data["refs"])
    say(f"{run} seed {seed}: test BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}")
    # the tested checkpoint: checkpoint_best.pt, picked by the mode's validation metric
    metric = selected_by(setting)
    best = checkpoint_epoch(info["epochs"], metric, higher_is_better=metric == "bleu") or {}
    return {
        "test_bleu": scores["bleu"],
        "test_chrf": scores["chrf"],
        "selected_by": f"valid_{metric}",
        "best_valid": best.get(metric),
        "best_epoch": best.get("epoch"),
        "valid_bleu_at_best": best.get("bleu"),
        "valid_loss_at_best": best.get("loss"),
        "valid_ppl_at_best": best.get("ppl"),
        **training_record(info),
        "generate_command": gen_command,
        "generate_output": rel(gen),
        "bleu_signature": scores["bleu_signature"],
        "chrf_signature": scores["chrf_signature"],
    }


def compare(args, data, seed, runs):
    """sacrebleu's paired bootstrap resampling of the seed's two test outputs (BLEU and chrF):
    the second run of ``runs`` against the first."""
    first, second = (decode.read_hypotheses(os.path.join(REPO_ROOT, record["generate_output"]), len(data["refs"]))
                     for record in runs.values())
    test = paired_bleu_test(first, second, data["refs"])
    return {
        "p_values": {"test_bleu": test["p_value"], "test_chrf": test.get("p_value_chrf")},
        "significance": {k: v for k, v in test.items() if k in ("test", "resamples", "sacrebleu_version", "seed")},
    }


def table_rows(args):
    """The printed table's rows; the best validation value is the mode's selection metric's."""
    metric = selected_by(MODES[args.mode])
    return (
        ("test BLEU", "test_bleu", "{:.2f}"),
        ("test chrF", "test_chrf", "{:.2f}"),
        (f"best valid {'BLEU' if metric == 'bleu' else 'loss'}", "best_valid", "{:.2f}" if metric == "bleu" else "{:.3f}"),
    ) + TRAINING_ROWS


# ---------------------------------------------------------------------------


def parse_args(argv=None):
    p = demo_parser(__doc__, MODES, 5.0, "the paper's IWSLT De-En value", DROPOUT)
    p.add_argument("--beam", type=int, help=f"beam size for the test set (default: {DEFAULT_BEAM})")
    p.add_argument("--limit", type=int, help="override the mode's number of train pairs")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--from-apt", action="store_true", help="rebuild the corpus from apt instead of the snapshot")
    source.add_argument("--text-dir", metavar="DIR",
                        help="train and test on your own German->English text instead: line-aligned "
                             "{train,valid,test}.{de,en} in DIR (the mode's slice limits apply); the runs "
                             "go to work/<mode>-<DIR's name>/ and the results to <mode>-<DIR's name>.json")
    p.add_argument("--snapshot", default=debian_snapshot.SNAPSHOT, help=argparse.SUPPRESS)
    args = parse_demo_args(p, argv, HERE, data_name=text_dir_name)
    if args.beam is not None and args.beam < 1:
        p.error(f"--beam must be >= 1, got {args.beam}")
    return args


def beam(args):
    return args.beam or DEFAULT_BEAM


def corpus_source(args):
    if args.text_dir is not None:
        return text_dir_source(args)
    return "rebuilt from apt" if args.from_apt else rel(args.snapshot)


def prepare_data(args):
    say("data: preparing (each stage is skipped when done)")
    data = dict(MODES[args.mode]["data"])
    if args.limit is not None:
        data["limit"] = args.limit
    d = prep.prepare(
        os.path.join(args.work_dir, "data"), from_apt=args.from_apt, text_dir=args.text_dir,
        snapshot=args.snapshot, workers=args.threads, **data
    )
    with open(os.path.join(d["text"], "test.en"), encoding="utf-8") as f:
        refs = [line.rstrip("\n") for line in f]
    return dict(d, refs=refs, key=data_key(d["data_bin"]))


def task_results(args, data, per_seed):
    first = next(iter(per_seed.values()))
    deltas = [res["rdrop"]["test_bleu"] - res["baseline"]["test_bleu"] for res in per_seed.values()]
    chrf = [res["rdrop"]["test_chrf"] - res["baseline"]["test_chrf"] for res in per_seed.values()]
    return {
        "delta_bleu": round(sum(deltas) / len(deltas), 2),
        "delta_chrf": round(sum(chrf) / len(chrf), 2),
        "bleu_signature": first["baseline"]["bleu_signature"],
        "chrf_signature": first["baseline"]["chrf_signature"],
        "data": {"pairs": data["counts"], "corpus": corpus_source(args)},
    }


TASK = DemoTask.of_module(
    "examples.translation.demo",
    sys.modules[__name__],
    title=lambda args: f"De->En Debian descriptions, mode '{args.mode}'",
    table_rows=table_rows,
    curves=(("loss", "validation loss", "label-smoothed loss (base 2)"), ("bleu", "validation BLEU", "BLEU")),
    status_metrics=("bleu", "loss"),  # what --status shows per epoch
    mean_keys=("test_bleu", "test_chrf", "best_valid") + TRAINING_MEAN_KEYS,
    selection=lambda args: selected_by(MODES[args.mode]),
    errors=(prep.PrepareError, dc.CorpusError),
)


def main(argv=None):
    return run_demo(TASK, argv)


if __name__ == "__main__":
    sys.exit(main())
