"""Where a demo's runs train and what its results files are called: every setting other than the
mode's goes into the names, so runs and results of other settings sit beside the default ones.
"""

import os

from examples.common.base import say

def runs_to_do(args):
    """The runs this invocation trains: all the demo's, or the one named by ``--run``."""
    return args.runs if args.only_run is None else (args.only_run,)


def _alpha_suffix(args):
    return "" if args.alpha == args.default_alpha else f"-alpha{args.alpha:g}"


def variant_name(tokens):
    """The name of ``--rdrop-flags`` (or a run's own flags) in run dirs and results files:
    ``("--rdrop-fraction", "0.5", "--rdrop-share-encoder")`` -> ``"fraction0.5-share-encoder"``,
    ``("--unlabeled-ratio", "2")`` -> ``"unlabeled-ratio2"``."""
    parts = []
    for token in tokens:
        if token.startswith("--"):
            name = token[2:].replace("=", "")
            parts.append(name[len("rdrop-"):] if name.startswith("rdrop-") else name)
        else:
            parts[-1] += token
    return "-".join(parts)


def _variant_suffix(args):
    flags = getattr(args, "rdrop_flags", ())
    return f"-{variant_name(flags)}" if flags else ""


def _own_flags_suffix(args, run):
    """A further run's own flags (``--<run>-flags``, e.g. ``--semi-flags``) in names."""
    flags = getattr(args, f"{run}_flags", ()) if run not in ("baseline", "rdrop") else ()
    return f"-{variant_name(flags)}" if flags else ""


def _run_suffix(args, run):
    """What of a run's settings its directory's name holds beyond the dropout: every R-Drop run's
    α and ``--rdrop-flags``, then the run's own flags."""
    return "" if run == "baseline" else _alpha_suffix(args) + _variant_suffix(args) + _own_flags_suffix(args, run)


def run_dropout(args, run):
    """The dropout ``run`` trains with: ``--baseline-dropout``/``--rdrop-dropout`` (R-Drop's also
    for a demo's further R-Drop runs), else ``--dropout``, else the mode's for that run (the
    criteria may have their own)."""
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
    if value is None or value == args.default_max_tokens:
        return None
    return value


def _tokens_suffix(args):
    tokens = max_tokens_override(args)
    return "" if tokens is None else f"-tokens{tokens}"


def _dropout_suffix(args):
    """``-dropout<P>`` where every run's dropout differs from the mode's and is the same,
    else ``-bdropout<P>`` and ``-rdropout<P>`` for each run whose dropout differs (a further
    R-Drop run's follows R-Drop's)."""
    values = {run: dropout_override(args, run) for run in args.runs[:2]}
    if values["baseline"] is not None and values["baseline"] == values["rdrop"]:
        return f"-dropout{values['baseline']}"
    return "".join(f"-{run[0]}dropout{v}" for run, v in values.items() if v is not None)


def run_dir(args, run, seed):
    """Where ``run`` of ``seed`` trains: ``<work-dir>/baseline-seed<S>``, ``/rdrop-seed<S>``,
    ``/rdrop-alpha<A>-seed<S>`` for another alpha; another batch size adds ``-tokens<N>`` to
    both, another dropout of a run ``-dropout<P>`` to that run (``baseline-dropout<P>-seed<S>``);
    a further R-Drop run (``semi``) is named like R-Drop's, with its own flags after them."""
    dropout = dropout_override(args, run)
    dropout = "" if dropout is None else f"-dropout{dropout}"
    return os.path.join(args.work_dir, f"{run}{_tokens_suffix(args)}{dropout}{_run_suffix(args, run)}-seed{seed}")


# options that change the results but not a run's directory: (attribute, name in the results name)
NAMED_OVERRIDES = (("limit", "limit"), ("train_lines", "lines"), ("train_limit", "limit"), ("beam", "beam"),
                   ("max_epoch", "epochs"), ("patience", "patience"))


def results_stem(args):
    """The results files' name: ``<mode>``, plus ``-<data name>`` for other data, and for every
    setting other than the mode's: ``-tokens<N>``, ``-dropout<P>`` (both runs; one run's:
    ``-bdropout<P>``, ``-rdropout<P>``), ``-limit<N>``/``-lines<N>``,
    ``-beam<N>``, ``-epochs<N>``, ``-patience<N>``, ``-alpha<A>`` and ``-seeds<S>_<S>...``;
    no two settings share a name."""
    data = f"-{args.data_name}" if getattr(args, "data_name", None) else ""
    named = "".join(f"-{label}{getattr(args, attr)}" for attr, label in NAMED_OVERRIDES
                    if getattr(args, attr, None) is not None)
    seeds = "" if tuple(args.seeds) == tuple(args.default_seeds) else "-seeds" + "_".join(map(str, args.seeds))
    return (args.mode + data + _tokens_suffix(args) + _dropout_suffix(args) + named + _alpha_suffix(args)
            + _variant_suffix(args) + "".join(_own_flags_suffix(args, run) for run in args.runs[2:]) + seeds)


def only_one_run(args):
    """After a ``--run`` invocation: say what comes next (there is no comparison to write)."""
    if args.only_run is None:
        return False
    others = " and ".join(r for r in args.runs if r != args.only_run)
    say(f"only the {args.only_run} run was asked for (--run): no results file written; when the "
        f"{others} run{'s are' if len(args.runs) > 2 else ' is'} done too, run the same command without --run "
        "to write the results")
    return True
