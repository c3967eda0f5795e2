"""Compatibility with current torch and the fairseq distributions we support."""

import argparse

INSTALL_HINT = (
    "rdrop_seq needs fairseq. On Python 3.11/3.12 install it with "
    "`pip install ve-fairseq==0.12.3` (or `pip install fairseq-fixed==0.12.3.1`); "
    "the official fairseq 0.12.2 release does not import on Python >= 3.11. "
    "Install torch first (e.g. `pip install torch==2.13.0`) so pip does not pull "
    "a different torch build."
)


def allow_fairseq_checkpoints() -> None:
    """Let torch's weights-only loader read fairseq checkpoints.

    torch >= 2.6 loads checkpoints with ``weights_only=True``; fairseq's
    translation checkpoints carry their training arguments as an
    ``argparse.Namespace``, which the loader refuses unless allow-listed.  Only
    that class is added; weights-only loading stays on.
    """
    import torch.serialization

    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:  # torch < 2.4 loads everything anyway
        add_safe_globals([argparse.Namespace])


def require_fairseq():
    """Import fairseq or fail with an error that says what to install."""
    try:
        import fairseq  # noqa: F401
        from fairseq.criterions import register_criterion  # noqa: F401
    except Exception as err:  # ImportError, or a broken install raising anything
        raise ImportError(f"{INSTALL_HINT} (importing fairseq failed: {err!r})") from err
    return fairseq
