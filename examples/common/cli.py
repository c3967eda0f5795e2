"""The options every demo takes, their parsing (work and results dirs, the mode's defaults) and checks."""

import argparse
import os
import re
import shlex
import sys

from examples.common.base import COMPARISONS, RUN_LABELS, RUNS, DemoError, flags, rel


def seed_list(text):
    """``"1,2,3"`` -> ``(1, 2, 3)`` (argparse type of ``--seeds``)."""
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is named twice: {text!r}")
    return seeds


def flag_list(option, pattern, what, refused):
    """An argparse type of ``option`` (``--rdrop-flags``): ``"--rdrop-fraction 0.5"`` ->
    ``("--rdrop-fraction", "0.5")``, each flag matching ``pattern`` (``what`` names them), none
    of ``refused`` (``{flag: what to do instead}``)."""

    def parse(text):
        tokens = tuple(shlex.split(text))
        for token in tokens:
            name = token.split("=")[0]
            if token.startswith("-") and not re.fullmatch(pattern, name):
                raise argparse.ArgumentTypeError(f"{option} takes {what} only, got {token}")
            if name in refused:
                raise argparse.ArgumentTypeError(f"{option}: {refused[name]}")
        if tokens and not tokens[0].startswith("--"):
            raise argparse.ArgumentTypeError(f"{option} must start with a flag, got {tokens[0]}")
        return tokens

    return parse


rdrop_variant_flags = flag_list("--rdrop-flags", r"--rdrop-[a-z-]+", "R-Drop flags (--rdrop-...)",
                                refused={"--rdrop-alpha": "set alpha with --alpha"})


def rdrop_run_flags(args, criterion):
    """fairseq-train's flags of an R-Drop run: the criterion, ``--alpha`` and ``--rdrop-flags``."""
    return ["--criterion", criterion, "--rdrop-alpha", str(args.alpha), *args.rdrop_flags]


def chosen_settings(chosen):
    """A mode's ``dropout``, ``rdrop_dropout``, ``alpha`` and ``chosen_by`` from the search rows
    ``chosen`` names (``{"baseline": {"dropout": ...}, "rdrop": {"dropout": ..., "alpha": ...}, ...}``):
    each criterion at the settings its validation search chose."""
    return {"dropout": chosen["baseline"]["dropout"], "rdrop_dropout": chosen["rdrop"]["dropout"],
            "alpha": chosen["rdrop"]["alpha"], "chosen_by": chosen}


def demo_parser(doc, modes, alpha, alpha_note, dropout, runs=RUNS, comparisons=COMPARISONS):
    """The options every demo takes; a demo adds its own before :func:`parse_demo_args`.
    ``runs``: the demo's runs, the baseline first; ``comparisons``: the pairs it tests."""
    description, epilog = doc.split("\n\n", 1)
    # no abbreviations: the demo passes its argv on to one process per run
    p = argparse.ArgumentParser(allow_abbrev=False, description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="quick", choices=sorted(modes), help="default: %(default)s")
    mode_alpha = {m: s.get("alpha", alpha) for m, s in modes.items()}
    p.add_argument("--alpha", type=float,
                   help="R-Drop KL weight (default: the mode's, "
                        + ", ".join(f"{m} {a:g}" for m, a in sorted(mode_alpha.items()))
                        + f"; {alpha:g} is {alpha_note}); another value trains its R-Drop runs in "
                        "rdrop-alpha<A>-seed<S>/ beside the default ones and writes <mode>-alpha<A>.json, "
                        "so an alpha sweep keeps every run and shares the baselines")
    p.set_defaults(mode_alpha=mode_alpha)
    # each criterion at its own dropout: a mode's "dropout" is the baseline's (and R-Drop's unless
    # it sets "rdrop_dropout", and another run's R-Drop's unless it sets "<run>_dropout"), chosen on
    # validation (RESULTS.md of each demo)
    mode_dropout = {}
    for m, s in modes.items():
        rdrop = s.get("rdrop_dropout", s.get("dropout", dropout))
        mode_dropout[m] = {"baseline": s.get("dropout", dropout), "rdrop": rdrop,
                           **{run: s.get(f"{run}_dropout", rdrop) for run in runs[2:]}}
    shown = ", ".join(f"{m} {d['baseline']:g}/{d['rdrop']:g}" for m, d in sorted(mode_dropout.items()))
    p.add_argument("--dropout", type=float,
                   help=f"override the dropout of every run (default: the mode's, baseline/R-Drop: {shown}); "
                        "another value trains the runs in baseline-dropout<P>/ and rdrop-dropout<P>[-alpha<A>]/ "
                        "and writes <mode>-dropout<P>[-alpha<A>].json, beside the default runs")
    p.add_argument("--baseline-dropout", type=float, help="override the baseline's dropout alone")
    p.add_argument("--rdrop-dropout", type=float, help="override R-Drop's dropout alone"
                   + ("" if len(runs) == 2 else f" (and that of the {', '.join(RUN_LABELS[r] for r in runs[2:])} run)"))
    p.set_defaults(mode_dropout=mode_dropout,
                   mode_chosen_by={m: s.get("chosen_by") for m, s in modes.items()})
    p.add_argument("--rdrop-flags", type=rdrop_variant_flags, default=(), metavar="'FLAGS'",
                   help="more R-Drop flags for the R-Drop runs alone, e.g. '--rdrop-fraction 0.5' or "
                        "'--rdrop-every 2' (docs/criterions.md); they train in rdrop[-...]-<flags>-seed<S>/ "
                        "beside the default runs, share the baselines, and go into the results name")
    p.add_argument("--seeds", type=seed_list, metavar="S[,S...]",
                   help="the seeds; each trains every run (default: the mode's, "
                        + ", ".join(f"{m} {','.join(map(str, s['seeds']))}" for m, s in sorted(modes.items()))
                        + "); other seeds than the mode's go into the results name")
    p.set_defaults(mode_seeds={m: tuple(s["seeds"]) for m, s in modes.items()})
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per training process (default: %(default)s: on a few cores, one process "
                        "per core with one thread each trains the seeds fastest)")
    p.add_argument("--jobs", type=int,
                   help="training processes at once (default: the CPU cores divided by --threads); each "
                        "trains and evaluates one run of one seed, and the demo then compares them")
    p.add_argument("--max-epoch", type=int, help="override the mode's epoch budget")
    p.add_argument("--patience", type=int, help="override the mode's early-stopping patience (epochs)")
    # a mode may train a part of the demo's runs ("runs") and share another mode's work dir
    # ("work_of": its runs are the same commands, so they are found done, not trained again)
    p.set_defaults(mode_runs=runs_of_modes(modes, runs),
                   mode_work={m: s.get("work_of", m) for m, s in modes.items()},
                   all_comparisons=tuple(comparisons))
    p.add_argument("--run", choices=runs, dest="only_run",
                   help="train and evaluate only this run (of each seed), and write no results file; a later "
                        "invocation without --run finds it done and writes the results")
    p.add_argument("--status", action="store_true",
                   help="only print where the runs of this mode (and --alpha/--dropout/--seeds) stand: state, "
                        "epochs, time so far and their validation values per epoch, also while they train")
    return p


def runs_of_modes(modes, runs=RUNS):
    """Each mode's runs: those it names (``"runs"``), else every run of the demo (``runs``)."""
    return {m: tuple(s.get("runs", runs)) for m, s in modes.items()}


def modes_with_run(mode_runs, run):
    """The modes that train ``run`` (sorted), from ``runs_of_modes``: where a refusal sends the user."""
    return sorted(m for m, runs in mode_runs.items() if run in runs)


def text_dir_name(args):
    """The name of ``--text-dir`` (the user's own data) for work dirs and results files, or None."""
    return args.text_dir and os.path.basename(os.path.abspath(args.text_dir))


def text_dir_source(args):
    """Where ``--text-dir``'s data came from, as the results files record it."""
    return f"text files in {rel(os.path.abspath(args.text_dir))}"


def parse_demo_args(p, argv, example_dir, data_name=None):
    """Parse; work and results dirs default to ``<example_dir>/work/<mode>`` and ``/results``.
    ``data_name(args)``: a name for data other than the demo's own (the user's text directory), or
    None; it goes into the default work dir (``work/<mode>-<name>``) and the results files' name."""
    shown = rel(example_dir)
    p.add_argument("--work-dir", help=f"default: {shown}/work/<mode>")
    p.add_argument("--results-dir", default=os.path.join(example_dir, "results"),
                   help=f"default: {shown}/results")
    args = p.parse_args(argv)
    name = data_name(args) if data_name else None
    args.data_name = re.sub(r"[^\w.-]+", "_", name) if name else None
    default_work = args.mode_work[args.mode] + (f"-{args.data_name}" if args.data_name else "")
    args.work_dir = os.path.abspath(args.work_dir or os.path.join(example_dir, "work", default_work))
    args.results_dir = os.path.abspath(args.results_dir)
    args.default_seeds = args.mode_seeds[args.mode]
    args.runs = args.mode_runs[args.mode]
    args.comparisons = tuple(pair for pair in args.all_comparisons if set(pair) <= set(args.runs))
    args.default_dropout_of = args.mode_dropout[args.mode]
    args.default_alpha = args.mode_alpha[args.mode]
    args.alpha = args.default_alpha if args.alpha is None else args.alpha
    args.seeds = args.default_seeds if args.seeds is None else args.seeds
    if args.jobs is None:
        args.jobs = max(1, (os.cpu_count() or 1) // max(1, args.threads))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def check_demo_args(args):
    """Refuse bad values of the shared options (before anything runs)."""
    if args.only_run is not None and args.only_run not in args.runs:
        elsewhere = modes_with_run(args.mode_runs, args.only_run)
        raise DemoError(f"--run {args.only_run}: mode {args.mode} trains {', '.join(args.runs)}; the "
                        f"{RUN_LABELS.get(args.only_run, args.only_run)} run is in mode {', '.join(elsewhere)}")
    for flag, least in (("alpha", 0), ("threads", 1), ("max_epoch", 1), ("patience", 1), ("jobs", 1)):
        value = getattr(args, flag)
        if value is not None and value < least:
            raise DemoError(f"--{flag.replace('_', '-')} must be >= {least}, got {value}")
    for flag in ("dropout", "baseline_dropout", "rdrop_dropout"):
        value = getattr(args, flag, None)
        if value is not None and not 0 <= value < 1:
            raise DemoError(f"--{flag.replace('_', '-')} must be in [0, 1), got {value}")
    if any(s < 0 for s in args.seeds):
        raise DemoError(f"--seeds must be >= 0, got {','.join(map(str, args.seeds))}")


def train_flags(args, setting):
    """The mode's training flags with ``--max-epoch``/``--patience`` overrides applied."""
    overrides = {"max-epoch": args.max_epoch, "patience": args.patience}
    return flags({**setting["train"], **{k: v for k, v in overrides.items() if v is not None}})
