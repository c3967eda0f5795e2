"""Where a demo's runs train and what its results files are called: every setting other than the
mode's goes into the names, so runs and results of other settings sit beside the default ones.
"""

import os

from examples.common.base import RUNS, say

def runs_to_do(args):
    """The runs this invocation trains: both, or the one named by ``--run``."""
    return RUNS if args.only_run is None else (args.only_run,)


def _alpha_suffix(args):
    return "" if args.alpha == args.default_alpha else f"-alpha{args.alpha:g}"


def dropout_override(args):
    """The ``--dropout`` value for fairseq when it differs from the demo's default, else None."""
    if args.dropout is None or args.dropout == args.default_dropout:
        return None
    return f"{args.dropout:g}"


def _dropout_suffix(args):
    value = dropout_override(args)
    return "" if value is None else f"-dropout{value}"


def max_tokens_override(args):
    """The ``--max-tokens`` value when a demo takes it and it differs from its default, else None."""
    value = getattr(args, "max_tokens", None)
    if value is None or value == args.default_max_tokens:
        return None
    return value


def _settings_suffix(args):
    """``-tokens<N>`` and ``-dropout<P>`` for settings other than the defaults (both runs)."""
    tokens = max_tokens_override(args)
    return ("" if tokens is None else f"-tokens{tokens}") + _dropout_suffix(args)


def run_dir(args, run, seed):
    """Where ``run`` of ``seed`` trains: ``<work-dir>/baseline-seed<S>``, ``/rdrop-seed<S>``,
    ``/rdrop-alpha<A>-seed<S>`` for another alpha; another batch size or dropout adds
    ``-tokens<N>`` or ``-dropout<P>`` to both (``baseline-dropout<P>-seed<S>``)."""
    alpha = _alpha_suffix(args) if run == "rdrop" else ""
    return os.path.join(args.work_dir, f"{run}{_settings_suffix(args)}{alpha}-seed{seed}")


# options that change the results but not a run's directory: (attribute, name in the results name)
NAMED_OVERRIDES = (("limit", "limit"), ("train_lines", "lines"), ("train_limit", "limit"), ("beam", "beam"),
                   ("max_epoch", "epochs"), ("patience", "patience"))


def results_stem(args):
    """The results files' name: ``<mode>``, plus ``-<data name>`` for other data, and for every
    setting other than the mode's: ``-tokens<N>``, ``-dropout<P>``, ``-limit<N>``/``-lines<N>``,
    ``-beam<N>``, ``-epochs<N>``, ``-patience<N>``, ``-alpha<A>`` and ``-seeds<S>_<S>...``;
    no two settings share a name."""
    data = f"-{args.data_name}" if getattr(args, "data_name", None) else ""
    named = "".join(f"-{label}{getattr(args, attr)}" for attr, label in NAMED_OVERRIDES
                    if getattr(args, attr, None) is not None)
    seeds = "" if tuple(args.seeds) == tuple(args.default_seeds) else "-seeds" + "_".join(map(str, args.seeds))
    return args.mode + data + _settings_suffix(args) + named + _alpha_suffix(args) + seeds


def only_one_run(args):
    """After a ``--run`` invocation: say what comes next (there is no comparison to write)."""
    if args.only_run is None:
        return False
    other = [r for r in RUNS if r != args.only_run][0]
    say(f"only the {args.only_run} run was asked for (--run): no results file written; when the "
        f"{other} run is done too, run the same command without --run to write the results")
    return True
