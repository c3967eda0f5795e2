"""Where a demo's runs train and what its results files are called: every setting other than the
mode's goes into the names, so runs and results of other settings sit beside the default ones.
"""

import os

# options that change the results but not a run's directory: (attribute, name in the results name)
NAMED_OVERRIDES = (("limit", "limit"), ("train_lines", "lines"), ("train_limit", "limit"), ("beam", "beam"),
                   ("max_epoch", "epochs"), ("patience", "patience"))


def variant_name(tokens):
    """The name of ``--rdrop-flags`` (or a run's own flags) in run dirs and results files:
    ``("--rdrop-fraction", "0.5", "--rdrop-share-encoder")`` -> ``"fraction0.5-share-encoder"``,
    ``("--unlabeled-ratio", "2")`` -> ``"unlabeled-ratio2"``."""
    parts = []
    for token in tokens:
        if token.startswith("--"):
            parts.append(token[2:].replace("=", "").removeprefix("rdrop-"))
        else:
            parts[-1] += token
    return "-".join(parts)


def _flags_suffix(tokens):
    return f"-{variant_name(tokens)}" if tokens else ""


def _alpha_suffix(args):
    return "" if args.alpha == args.default_alpha else f"-alpha{args.alpha:g}"


def _own_flags_suffix(args, run):
    """A further run's own flags (``--<run>-flags``, e.g. ``--semi-flags``) in names."""
    return "" if run in ("baseline", "rdrop") else _flags_suffix(getattr(args, f"{run}_flags", ()))


def run_dropout(args, run):
    """The dropout ``run`` trains with: ``--baseline-dropout``/``--rdrop-dropout`` (R-Drop's also
    for a demo's further R-Drop runs), else ``--dropout``, else the mode's for that run."""
    own = getattr(args, f"{'baseline' if run == 'baseline' else 'rdrop'}_dropout", None)
    if own is not None:
        return own
    return args.dropout if args.dropout is not None else args.default_dropout_of[run]


def dropout_override(args, run, base=None):
    """``run``'s dropout for fairseq's ``--dropout`` where it differs from ``base`` (default:
    the mode's for that run; a demo that leaves the architecture's own gives that), else None."""
    value = run_dropout(args, run)
    return None if value == (args.default_dropout_of[run] if base is None else base) else f"{value:g}"


def max_tokens_override(args):
    """The ``--max-tokens`` value when a demo takes it and it differs from its default, else None."""
    value = getattr(args, "max_tokens", None)
    return None if value == getattr(args, "default_max_tokens", None) else value


def _tokens_suffix(args):
    tokens = max_tokens_override(args)
    return "" if tokens is None else f"-tokens{tokens}"


def run_dir(args, run, seed):
    """Where ``run`` of ``seed`` trains: ``<work-dir>/baseline-seed<S>``, ``/rdrop-seed<S>``,
    ``/rdrop-alpha<A>-seed<S>`` for another alpha; another batch size adds ``-tokens<N>`` to
    both, another dropout of a run ``-dropout<P>`` to that run (``baseline-dropout<P>-seed<S>``);
    an R-Drop run adds ``--rdrop-flags``, a further one (``semi``) then its own flags."""
    dropout = dropout_override(args, run)
    name = run + _tokens_suffix(args) + ("" if dropout is None else f"-dropout{dropout}")
    if run != "baseline":
        name += _alpha_suffix(args) + _flags_suffix(getattr(args, "rdrop_flags", ())) + _own_flags_suffix(args, run)
    return os.path.join(args.work_dir, f"{name}-seed{seed}")


def results_stem(args):
    """The results files' name: ``<mode>``, plus ``-<data name>`` for other data, and for every
    setting other than the mode's: ``-tokens<N>``, ``-dropout<P>`` (both runs; one run's:
    ``-bdropout<P>``, ``-rdropout<P>``), ``-limit<N>``/``-lines<N>``,
    ``-beam<N>``, ``-epochs<N>``, ``-patience<N>``, ``-alpha<A>`` and ``-seeds<S>_<S>...``;
    no two settings share a name."""
    data = f"-{args.data_name}" if getattr(args, "data_name", None) else ""
    dropouts = {run: dropout_override(args, run) for run in args.runs[:2]}
    if dropouts["baseline"] is not None and dropouts["baseline"] == dropouts["rdrop"]:
        dropout = f"-dropout{dropouts['baseline']}"
    else:
        dropout = "".join(f"-{run[0]}dropout{v}" for run, v in dropouts.items() if v is not None)
    named = "".join(f"-{label}{getattr(args, attr)}" for attr, label in NAMED_OVERRIDES
                    if getattr(args, attr, None) is not None)
    seeds = "" if tuple(args.seeds) == tuple(args.default_seeds) else "-seeds" + "_".join(map(str, args.seeds))
    flags = _flags_suffix(getattr(args, "rdrop_flags", ())) + "".join(_own_flags_suffix(args, r) for r in args.runs[2:])
    return args.mode + data + _tokens_suffix(args) + dropout + named + _alpha_suffix(args) + flags + seeds
