#!/usr/bin/env python3
"""R-Drop for sentence classification: Debian package descriptions -> their archive section.

The paper fine-tunes pre-trained encoders on GLUE with R-Drop; this demo keeps
that shape at laptop size, on real data that needs no download (the corpus
snapshot in ``data/``, built from Debian's apt index files by
``debian_sections.py``):

1. a small RoBERTa-style encoder (fairseq ``roberta``) is pre-trained with
   fairseq's ``masked_lm`` task on every training description, once;
2. from that checkpoint it is fine-tuned two or three times per seed on a
   labelled slice, from the same seed: stock ``sentence_prediction`` (the
   baseline), ``rdrop_sentence_prediction`` (R-Drop) and semi-supervised R-Drop
   (``semi``: the same criterion with ``--rdrop-unlabeled-alpha``, the task
   ``sentence_prediction_unlabeled`` mixing the remaining training descriptions,
   without their sections, into every batch; modes medium, tiny and full), each
   stopped early on validation accuracy;
3. each run's best checkpoint (by validation accuracy) predicts the test set;
   the demo reports test accuracy and macro-F1 per seed and over seeds, and
   McNemar's exact test of each seed's test predictions: R-Drop against the
   baseline, semi-supervised R-Drop against both.

Modes:

* ``tiny``: a smoke test of the whole pipeline (a minute or two).
* ``quick`` (default; 3 seeds): the baseline and R-Drop, each at its settings
  chosen on validation (RESULTS.md), within the 25-minute budget on 2 CPU cores.
* ``medium``: quick and the semi-supervised run (which does not fit quick's
  budget), in quick's work dir: after ``quick`` only the third run trains.
* ``full`` (3 seeds; ``--seeds`` changes that): every training description
  labelled, the architecture's own size; for a GPU.

Results go to ``results/<mode>.json`` and ``.png`` (the per-seed validation
curves); the runs are resumable (run the same command again).

Examples::

    python -m examples.classification.demo                    # quick mode
    python -m examples.classification.demo --mode tiny
    python -m examples.classification.demo --alpha 2          # another alpha: rdrop-alpha2-seed<S>/
    python -m examples.classification.demo --mode medium      # quick and the semi-supervised run
    python -m examples.classification.demo --mode medium --semi-flags '--unlabeled-ratio 2'   # semi-unlabeled-ratio2-seed<S>/
    python -m examples.classification.demo --mode medium --run semi --seeds 1   # one run of one seed
    python -m examples.classification.demo --status           # where the runs stand
"""

import os
import re
import sys
import time

from examples.classification import prepare as prep
from examples.common.base import (
    DemoError, check_fairseq, device_flags, display, flags, rel, run_tool, say, train_run_flags,
)
from examples.common.cli import (check_demo_args, chosen_settings, demo_parser, flag_list, modes_with_run,
                                 parse_demo_args, rdrop_run_flags, train_flags)
from examples.common.driver import DemoTask, run_demo
from examples.common.fairseq_log import checkpoint_epoch
from examples.common.naming import dropout_override, run_dir
from examples.common.report import TRAINING_MEAN_KEYS, TRAINING_ROWS
from examples.common.stages import dir_stage, fairseq_command, read_json, sha256_file, stage_key
from examples.common.stats import mcnemar_test
from examples.common.training import train_run, training_record

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))

RDROP_CRITERION = "rdrop_sentence_prediction"
SEMI_TASK = "sentence_prediction_unlabeled"  # the task of the semi-supervised run
# the runs per seed and the pairs tested: R-Drop against the baseline, the semi-supervised run
# against both
RUNS = ("baseline", "rdrop", "semi")
COMPARISONS = (("baseline", "rdrop"), ("baseline", "semi"), ("rdrop", "semi"))
HEAD = "sentence_classification_head"
ARCH = "roberta"
ARCH_DROPOUT = 0.1  # the dropout ARCH sets; --dropout overrides it in fine-tuning
VALID_METRICS = ("loss", "accuracy")

SMALL_MODEL = {
    "encoder-layers": 2, "encoder-embed-dim": 128, "encoder-ffn-embed-dim": 512, "encoder-attention-heads": 4,
}
# The search rows the quick mode's settings come from (RESULTS.md, "Each run at its own settings"):
# each run's best validation accuracy, seed 1, among the grids searched; the semi-supervised run
# is supervised R-Drop plus the unlabeled term, so it keeps R-Drop's dropout and alpha and its
# unlabeled weight was searched (r = 1).
QUICK_CHOSEN = {
    "search": "examples/classification/results/search.jsonl",
    "baseline": {"dropout": 0.0, "valid_accuracy": 42.2, "among": {"dropout": [0.0, 0.05, 0.1, 0.2, 0.3]}},
    "rdrop": {"dropout": 0.05, "alpha": 0.5, "valid_accuracy": 42.8,
              "among": {"dropout": [0.02, 0.05, 0.1, 0.2], "alpha": [0.25, 0.5, 1.0, 2.0, 4.0]}},
    # W searched at dropout 0.1 (alpha 1 and 2), then tried at R-Drop's chosen settings (43.1);
    # there, UDA's confidence mask tau, then the unlabeled sentences per labelled one r at tau 0.4
    # (r 3, searched once the medium rerun had started: 49.7, three validation sentences more on
    # one seed at more cost per epoch; r 2 kept, RESULTS.md)
    "semi": {"rdrop-unlabeled-alpha": 1.0, "unlabeled-ratio": 2, "unlabeled-confidence": 0.4,
             "valid_accuracy": 49.4,
             "among": {"rdrop-unlabeled-alpha": [0.3, 1.0, 3.0], "unlabeled-confidence": [0.0, 0.2, 0.4, 0.6],
                       "unlabeled-ratio": [1, 2]}},
    "seed": 1,
}
# Per-mode settings: "data" goes to prepare.prepare(); "model" is shared by pre-training and
# fine-tuning; "pretrain" and "train" are the two stages' own fairseq-train flags; "runs" the
# runs the mode trains (default: all three); "semi" the semi-supervised run's flags beyond
# R-Drop's (the unlabeled sentences per labelled one, their divergence's weight; --semi-flags
# adds to them).
QUICK = {
    "data": {"train_limit": 2000, "valid_limit": 1000, "test_limit": None, "pretrain_limit": None,
             "vocab_size": 8000},
    "model": SMALL_MODEL,
    "pretrain": {"lr": "1e-3", "warmup-updates": 60, "max-update": 600, "max-tokens": 4096},
    "train": {"lr": "3e-4", "warmup-updates": 60, "max-epoch": 40, "patience": 3, "batch-size": 32},
    **chosen_settings(QUICK_CHOSEN),
    "positions": 64,
    "seeds": (1, 2, 3),
    # the semi-supervised run does not fit the 25-minute budget beside the other two (its
    # epochs cost about twice R-Drop's): it is the medium mode's
    "runs": ("baseline", "rdrop"),
}
MODES = {
    "tiny": {
        "data": {"train_limit": 200, "valid_limit": 100, "test_limit": 100, "pretrain_limit": 2000,
                 "vocab_size": 2000},
        "model": {"encoder-layers": 1, "encoder-embed-dim": 32, "encoder-ffn-embed-dim": 64,
                  "encoder-attention-heads": 2},
        "pretrain": {"lr": "1e-3", "warmup-updates": 5, "max-update": 10, "max-tokens": 2048},
        "train": {"lr": "1e-3", "warmup-updates": 5, "max-epoch": 2, "batch-size": 16},
        "semi": {"unlabeled-ratio": 1, "rdrop-unlabeled-alpha": 1.0},
        "positions": 32,
        "seeds": (1, 2),
    },
    "quick": QUICK,
    # the quick mode and the semi-supervised run: quick's runs are the same commands in the same
    # work dir, so after `make demo-cls` only the third run trains
    "medium": dict(QUICK, runs=RUNS, work_of="quick",
                   semi={k: QUICK_CHOSEN["semi"][k]
                         for k in ("unlabeled-ratio", "rdrop-unlabeled-alpha", "unlabeled-confidence")}),
    "full": {
        "data": {"train_limit": None, "valid_limit": None, "test_limit": None, "pretrain_limit": None,
                 "vocab_size": 16000},
        "model": {},  # the architecture's own size
        "pretrain": {"lr": "5e-4", "warmup-updates": 1000, "max-update": 20000, "max-tokens": 8192},
        "train": {"lr": "1e-4", "warmup-updates": 500, "max-epoch": 20, "patience": 3, "batch-size": 32},
        "semi": {"unlabeled-ratio": 1, "rdrop-unlabeled-alpha": 1.0},
        "positions": 128,
        "seeds": (1, 2, 3),
    },
}  # fmt: skip
DEFAULT_ALPHA = 1.0


def check_setup(args):
    """Refuse bad input before any data preparation or training."""
    check_demo_args(args)
    if args.semi_flags and "semi" not in args.runs:
        raise DemoError(f"--semi-flags: mode {args.mode} has no semi-supervised run; it is in mode "
                        + ", ".join(modes_with_run(args.mode_runs, "semi")))
    if args.train_limit is not None and args.train_limit < 10:
        raise DemoError(f"--train-limit must be >= 10, got {args.train_limit}")
    try:
        import sentencepiece  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as e:
        raise DemoError(f"{e.name} is missing: pip install -e '.[demo]'") from None
    check_fairseq(args, RDROP_CRITERION)


def _fairseq_train(data_bin, task_flags, setting, save_dir, seed, extra):
    cmd = fairseq_command("train") + [data_bin] + task_flags + ["--arch", ARCH] + flags(setting["model"])
    cmd += [
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-06", "--weight-decay", "0.01",
        "--clip-norm", "0.0", "--lr-scheduler", "inverse_sqrt",
    ]  # fmt: skip
    return cmd + train_run_flags(save_dir, seed) + extra + device_flags()


def pretrain_command(args, mlm_bin, save_dir):
    """The masked-LM pre-training's fairseq-train command."""
    setting = MODES[args.mode]
    task_flags = ["--task", "masked_lm", "--criterion", "masked_lm", "--tokens-per-sample", str(setting["positions"]),
                  "--sample-break-mode", "none", "--mask-prob", "0.15"]
    return _fairseq_train(mlm_bin, task_flags, setting, save_dir, 1, flags(setting["pretrain"]) + [
        "--no-epoch-checkpoints", "--no-save-optimizer-state",
        # no background batching thread: --max-update stops mid-epoch, and a
        # thread still collating in torch at exit can abort the process
        "--data-buffer-size", "0"])


def pretrain(args, data, threads):
    """The masked-LM pre-training (once per mode and data), on every training description."""
    setting = MODES[args.mode]
    out = os.path.join(args.work_dir, "pretrain")
    mlm_data = [sha256_file(os.path.join(data["mlm_bin"], name)) for name in ("train.bin", "dict.txt")]
    key = stage_key(stage="pretrain", data=mlm_data, model=setting["model"], pretrain=setting["pretrain"],
                    positions=setting["positions"])

    def build(tmp):
        t0 = time.time()
        output = run_tool(pretrain_command(args, data["mlm_bin"], tmp), threads, "masked-LM pre-training")
        m = re.findall(r'"valid_loss": "([\d.]+)"', output)
        # the directory moves into place when this returns: the command names its final place
        return {"command": display(pretrain_command(args, data["mlm_bin"], out)), "threads": threads,
                "seconds": round(time.time() - t0, 1), "valid_loss": float(m[-1]) if m else None}

    dir_stage("pretrain", out, key, build,
              f"masked-LM pre-training on {data['pretrain_lines']} descriptions, {threads} threads", log=say)
    ckpt = os.path.join(out, "checkpoint_last.pt")
    return dict(read_json(os.path.join(out, ".stage.json")), checkpoint=ckpt, checkpoint_sha256=sha256_file(ckpt))


def semi_flags(args):
    """The semi-supervised run's flags beyond R-Drop's: the mode's, then ``--semi-flags``."""
    return flags(MODES[args.mode].get("semi", {})) + list(args.semi_flags)


def train_command(args, data, save_dir, run, seed):
    setting = MODES[args.mode]
    positions = setting["positions"]
    task = ["--task", SEMI_TASK, "--unlabeled-subset", data["unlabeled_subset"]] if run == "semi" else [
        "--task", "sentence_prediction"]
    task_flags = task + [
        "--num-classes", str(data["classes"]), "--max-positions", str(positions),
        "--shorten-method", "truncate", "--init-token", "0", "--separator-token", "2",
        "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric",
    ]  # fmt: skip
    extra = ["--finetune-from-model", data["pretrain"]["checkpoint"], "--no-epoch-checkpoints",
             "--required-batch-size-multiple", "1"]
    dropout = dropout_override(args, run, base=ARCH_DROPOUT)
    if dropout is not None:
        extra += ["--dropout", dropout]
    extra += train_flags(args, setting)
    if run == "baseline":
        extra += ["--criterion", "sentence_prediction"]
    else:
        extra += rdrop_run_flags(args, RDROP_CRITERION)
    if run == "semi":
        extra += semi_flags(args)
    return _fairseq_train(data["cls_bin"], task_flags, setting, save_dir, seed, extra)


def predict(args, data, run, seed):
    """The best checkpoint's test predictions (``predict.py``), keyed on the checkpoint."""
    save_dir = run_dir(args, run, seed)
    ckpt = os.path.join(save_dir, "checkpoint_best.pt")
    out_dir = os.path.join(save_dir, "test")
    cmd = [sys.executable, "-m", "examples.classification.predict", data["cls_bin"], "--path", ckpt, "--subset", "test",
           "--out", os.path.join(out_dir, "test.pred")]
    key = stage_key(ckpt=sha256_file(ckpt), data=data["key"])
    label = f"{run} seed {seed}"

    def build(tmp):
        run_tool(cmd[:-1] + [os.path.join(tmp, "test.pred")], args.threads, f"predicting the test set ({label})",
                 shown=cmd)
        return {"command": display(cmd)}

    dir_stage(f"predict {label}", out_dir, key, build, "the best checkpoint on the test set", log=say)
    info = read_json(os.path.join(out_dir, ".stage.json"))
    with open(os.path.join(out_dir, "test.pred"), encoding="utf-8") as f:
        rows = [line.split() for line in f]
    if len(rows) != data["counts"]["test"]:
        raise DemoError(f"{label}: {len(rows)} test predictions for {data['counts']['test']} test sentences")
    return dict(info, predicted=[p for p, _ in rows], gold=[g for _, g in rows],
                output=os.path.join(out_dir, "test.pred"))


def scores(predicted, gold):
    from sklearn.metrics import accuracy_score, f1_score

    return {"test_accuracy": 100.0 * accuracy_score(gold, predicted),
            "test_macro_f1": 100.0 * f1_score(gold, predicted, average="macro", labels=sorted(set(gold)),
                                             zero_division=0)}


# ---------------------------------------------------------------------------
# one run of one seed, and the comparison of two runs of a seed


def run_one(args, data, run, seed):
    """Fine-tune (or find fine-tuned) and score ``run`` of ``seed``; its per-seed record."""
    save_dir = run_dir(args, run, seed)
    cmd = train_command(args, data, save_dir, run, seed)
    info = train_run(cmd, save_dir, f"{run} seed {seed}", args.threads, VALID_METRICS, data=data["key"])
    test = predict(args, data, run, seed)
    figures = scores(test["predicted"], test["gold"])
    say(f"{run} seed {seed}: test accuracy {figures['test_accuracy']:.2f}, macro-F1 {figures['test_macro_f1']:.2f}")
    best = checkpoint_epoch(info["epochs"], "accuracy", higher_is_better=True) or {}
    return dict(figures, best_valid_accuracy=best.get("accuracy"), best_epoch=best.get("epoch"),
                **training_record(info), predict_command=test["command"], predictions=rel(test["output"]))


def compare(args, data, seed, runs):
    """McNemar's exact test between two runs' test predictions: the second run of ``runs``
    against the first."""
    correct = []
    for record in runs.values():
        with open(os.path.join(REPO_ROOT, record["predictions"]), encoding="utf-8") as f:
            correct.append([p == g for p, g in (line.split() for line in f)])
    test = mcnemar_test(*correct)
    return {
        "p_values": {"test_accuracy": test["p_value"]},
        "significance": {"test": test["test"], "resamples": test["resamples"]},
        "discordant": {k: test[k] for k in ("baseline_only", "system_only", "both", "neither", "n")},
    }


TABLE_ROWS = (
    ("test accuracy", "test_accuracy", "{:.2f}"),
    ("test macro-F1", "test_macro_f1", "{:.2f}"),
    ("best valid accuracy", "best_valid_accuracy", "{:.2f}"),
) + TRAINING_ROWS


def parse_args(argv=None):
    p = demo_parser(__doc__, MODES, DEFAULT_ALPHA, "rdrop_sentence_prediction's default", ARCH_DROPOUT,
                    runs=RUNS, comparisons=COMPARISONS)
    p.add_argument("--train-limit", type=int, help="override the mode's number of labelled training sentences")
    p.add_argument("--semi-flags", type=flag_list("--semi-flags", r"--(rdrop-)?unlabeled-[a-z-]+",
                                                  "the unlabeled objective's flags (--unlabeled-..., "
                                                  "--rdrop-unlabeled-...)",
                                                  refused={"--unlabeled-subset": "the demo names the unlabeled split"}),
                   default=(), metavar="'FLAGS'",
                   help="more flags for the semi-supervised runs, after the mode's ("
                        + "; ".join(f"{m}: {' '.join(flags(s['semi']))}" for m, s in sorted(MODES.items()) if "semi" in s)
                        + "), e.g. '--unlabeled-ratio 2 --unlabeled-confidence 0.5' (docs/criterions.md); they "
                        "train in semi-<flags>-seed<S>/ and go into the results name")
    return parse_demo_args(p, argv, HERE)


def prepare_data(args):
    say("data: preparing the Debian sections corpus (each stage is skipped when done)")
    data = dict(MODES[args.mode]["data"])
    if args.train_limit is not None:
        data["train_limit"] = args.train_limit
    # the data and the pre-training serve every run: both use all the cores
    threads = max(args.threads * args.jobs, args.threads)
    d = prep.prepare(os.path.join(args.work_dir, "data"), workers=threads, **data)
    d["key"] = stage_key(cls=sha256_file(os.path.join(d["cls_bin"], "input0", "train.bin")),
                         labels=sha256_file(os.path.join(d["cls_bin"], "label", "train.bin")))
    d["pretrain"] = pretrain(args, d, threads)
    # fine-tuning runs restart when the pre-trained model they start from changes
    d["key"] = stage_key(data=d["key"], pretrained=d["pretrain"]["checkpoint_sha256"])
    return d


def task_results(args, data, per_seed):
    """The classification figures beyond the driver's (the further pairs' deltas and tests are the
    driver's ``other_comparisons``)."""
    deltas = [res["rdrop"]["test_accuracy"] - res["baseline"]["test_accuracy"] for res in per_seed.values()]
    results = {
        "delta_accuracy": round(sum(deltas) / len(deltas), 2),
        "delta_accuracy_per_seed": {str(s): round(d, 2) for s, d in zip(per_seed, deltas)},
        "arch": ARCH,
        "model": MODES[args.mode]["model"] or "the architecture's own",
        "pretrain": {k: data["pretrain"].get(k) for k in ("command", "threads", "seconds", "valid_loss",
                                                          "checkpoint_sha256")},
        "data": {"counts": data["counts"], "classes": data["classes"], "pretrain_lines": data["pretrain_lines"],
                 "source": "examples/classification/data/debian-sections.tsv.xz (see its PROVENANCE.json)"},
    }
    if "semi" in args.runs:
        results["semi_flags"] = semi_flags(args)
        results["unlabeled"] = {"subset": data["unlabeled_subset"],
                                "sentences": data["counts"].get(data["unlabeled_subset"])}
    say(f"test accuracy change by R-Drop, mean over seeds: {results['delta_accuracy']:+.2f} points")
    return results


TASK = DemoTask.of_module(
    "examples.classification.demo",
    sys.modules[__name__],
    title=lambda args: f"Debian sections, {ARCH} (pre-trained, fine-tuned), mode '{args.mode}'",
    table_rows=lambda args: TABLE_ROWS,
    curves=(("accuracy", "validation accuracy", "accuracy (%)"), ("loss", "validation loss", "loss (base 2)")),
    status_metrics=("accuracy", "loss"),  # what --status shows per epoch
    mean_keys=("test_accuracy", "test_macro_f1", "best_valid_accuracy") + TRAINING_MEAN_KEYS,
    selection=lambda args: "accuracy",  # validation accuracy picks the checkpoint
    errors=(prep.PrepareError,),
)


def main(argv=None):
    return run_demo(TASK, argv)


if __name__ == "__main__":
    sys.exit(main())
