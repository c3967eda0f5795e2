"""Compatibility with current torch and the fairseq distributions we support.

Every fix of fairseq's own behaviour lives here: the ones importing the package
applies (checkpoint loading, ``--log-file``, empty-output BLEU) and the one
``rdrop-train`` applies when a command line needs it (``--bf16`` kept off the
TPU path: :func:`bf16_turns_into_tpu` decides, :func:`keep_bf16_off_tpu` does it).
"""

import argparse
import functools
import logging
import os
from typing import Sequence

INSTALL_HINT = (
    "rdrop_seq needs fairseq. On Python 3.11/3.12 install it with "
    "`pip install ve-fairseq==0.12.3` (or `pip install fairseq-fixed==0.12.3.1`); "
    "the official fairseq 0.12.2 release does not import on Python >= 3.11. "
    "Install torch first (e.g. `pip install torch==2.13.0`) so pip does not pull "
    "a different torch build."
)


def _numpy_array_globals():
    """What pickled numeric numpy arrays refer to, under numpy 1 and numpy 2 names."""
    import numpy

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        numpy.ndarray,
        numpy.dtype,
    ] + [type(numpy.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]  # numeric dtypes


def allow_fairseq_checkpoints() -> None:
    """Let torch's weights-only loader read fairseq checkpoints.

    torch >= 2.6 loads checkpoints with ``weights_only=True``.  fairseq's
    checkpoints carry their training arguments as an ``argparse.Namespace``
    and, when trained with ``--eval-bleu``, the BLEU n-gram counts of the
    validation meters as plain numpy arrays; the loader refuses both unless
    allow-listed.  Only these classes are added (the contents of an array are
    still checked by the same loader); weights-only loading stays on.
    """
    import torch.serialization

    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:  # torch < 2.4 loads everything anyway
        add_safe_globals([argparse.Namespace] + _numpy_array_globals())


def require_fairseq():
    """Import fairseq or fail with an error that says what to install."""
    try:
        import fairseq  # noqa: F401
        from fairseq.criterions import register_criterion  # noqa: F401
    except Exception as err:  # ImportError, or a broken install raising anything
        raise ImportError(f"{INSTALL_HINT} (importing fairseq failed: {err!r})") from err
    return fairseq


def log_file_once() -> None:
    """Make fairseq's ``--log-file`` hold each progress record once.

    fairseq 0.12's ``progress_bar()`` adds a new ``FileHandler`` for
    ``--log-file`` to its module's logger every time a progress bar is made,
    and ``fairseq-train`` makes one per epoch: at epoch N every record is
    written N times (the file grows with the square of the epochs) and N file
    descriptors stay open.  This wraps ``progress_bar()`` so that the handler
    is added only when that logger has none for the same file yet.
    """
    from fairseq.logging import progress_bar as module

    original = module.progress_bar
    if getattr(original, "_rdrop_seq_log_file_once", False):
        return

    @functools.wraps(original)
    def progress_bar(*args, **kwargs):
        log_file = kwargs.get("log_file")
        if log_file is not None and any(
            isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(log_file)
            for h in module.logger.handlers
        ):
            kwargs["log_file"] = None  # its handler is there already
        return original(*args, **kwargs)

    progress_bar._rdrop_seq_log_file_once = True
    module.progress_bar = progress_bar


def _bleu_or_zero(meters):
    """fairseq's derived validation BLEU (sacrebleu on the summed n-gram statistics, exp
    smoothing), and 0 while the hypotheses hold no n-gram at all."""
    import numpy as np
    from sacrebleu.metrics import BLEU

    totals = np.asarray(meters["_bleu_totals"].sum)
    if totals.max() <= 0:
        return 0.0
    bleu = BLEU.compute_bleu(
        correct=meters["_bleu_counts"].sum,
        total=meters["_bleu_totals"].sum,
        sys_len=int(meters["_bleu_sys_len"].sum),
        ref_len=int(meters["_bleu_ref_len"].sum),
        smooth_method="exp",
    )
    return round(bleu.score, 2)


def bleu_of_empty_output() -> None:
    """Give ``--eval-bleu`` a validation BLEU of 0 when every hypothesis is empty.

    fairseq 0.12's translation task logs its BLEU statistics and derives
    ``bleu`` only for validation steps whose hypotheses hold at least one
    n-gram; when a model emits only end-of-sentence for the whole validation
    set (which a small model can do in its first epoch) nothing is logged, and
    ``fairseq-train --best-checkpoint-metric bleu`` dies with ``KeyError:
    'bleu'``.  This wraps ``reduce_metrics()``: a step with no n-gram logs the
    same (zero) statistics as any other step and the same derived ``bleu``,
    computed as fairseq computes it and 0 while there is no n-gram.  Steps with
    n-grams, before or after, add to the same statistics, so the epoch's BLEU is
    the corpus BLEU of the whole validation set; it differs from what fairseq
    alone would log only where a step produced no n-gram, whose reference
    length fairseq drops (overstating BLEU through the brevity penalty).
    """
    import numpy as np
    from fairseq import metrics
    from fairseq.tasks.translation import EVAL_BLEU_ORDER, TranslationTask

    original = TranslationTask.reduce_metrics
    if getattr(original, "_rdrop_seq_bleu_of_empty_output", False):
        return

    @functools.wraps(original)
    def reduce_metrics(self, logging_outputs, criterion):
        original(self, logging_outputs, criterion)
        if not self.cfg.eval_bleu:
            return

        def total(key):
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        counts = [total(f"_bleu_counts_{i}") for i in range(EVAL_BLEU_ORDER)]
        totals = [total(f"_bleu_totals_{i}") for i in range(EVAL_BLEU_ORDER)]
        if max(totals) > 0:
            return  # fairseq logged this step's statistics and derived "bleu"
        metrics.log_scalar("_bleu_counts", np.array(counts))
        metrics.log_scalar("_bleu_totals", np.array(totals))
        metrics.log_scalar("_bleu_sys_len", total("_bleu_sys_len"))
        metrics.log_scalar("_bleu_ref_len", total("_bleu_ref_len"))
        metrics.log_derived("bleu", _bleu_or_zero)  # kept where fairseq's is there already

    reduce_metrics._rdrop_seq_bleu_of_empty_output = True
    TranslationTask.reduce_metrics = reduce_metrics


BF16_FLAGS = ("--bf16", "--memory-efficient-bf16")


def bf16_turns_into_tpu(argv: Sequence[str]) -> bool:
    """Whether fairseq 0.12 would send this training command line to a TPU unasked.

    fairseq 0.12 parses ``--bf16`` (and ``--memory-efficient-bf16``) as
    ``--bf16 --tpu``; True when ``argv`` asks for bfloat16 without ``--tpu``,
    i.e. when :func:`keep_bf16_off_tpu` must run before fairseq parses it.
    """
    flags = {str(a).split("=", 1)[0] for a in argv}
    return "--tpu" not in flags and any(flag in flags for flag in BF16_FLAGS)


def keep_bf16_off_tpu() -> None:
    """fairseq 0.12 parses ``--bf16`` as ``--bf16 --tpu``; undo the ``--tpu`` part."""
    from fairseq import options

    parse = options.parse_args_and_arch
    if getattr(parse, "_rdrop_bf16_not_tpu", False):
        return

    def parse_args_and_arch(*args, **kwargs):
        result = parse(*args, **kwargs)
        parsed = result[0] if isinstance(result, tuple) else result
        if getattr(parsed, "bf16", False):
            parsed.tpu = False
        return result

    parse_args_and_arch._rdrop_bf16_not_tpu = True
    options.parse_args_and_arch = parse_args_and_arch
