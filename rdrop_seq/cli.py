"""Command-line entry points.

``rdrop-train``, ``rdrop-generate``, ``rdrop-eval-lm``: ``fairseq-train``,
``fairseq-generate`` and ``fairseq-eval-lm`` with this package already given as
``--user-dir`` (every fairseq argument passes through unchanged).
``python -m rdrop_seq --user-dir``: print the directory to pass as ``--user-dir``.
"""

import argparse
import sys

from rdrop_seq.compat import INSTALL_HINT


def user_dir() -> str:
    import os

    return os.path.dirname(os.path.abspath(__file__))


def with_user_dir(argv):
    """Add ``--user-dir <this package>`` unless the caller already gave one."""
    if any(a == "--user-dir" or a.startswith("--user-dir=") for a in argv):
        return list(argv)
    return ["--user-dir", user_dir()] + list(argv)


def _run_fairseq_cli(name: str, module: str, argv) -> None:
    import importlib

    argv = sys.argv[1:] if argv is None else argv
    try:
        cli_main = importlib.import_module(module).cli_main
    except Exception as err:
        sys.exit(f"{name}: {INSTALL_HINT} (importing {module} failed: {err!r})")
    sys.argv = [name] + with_user_dir(argv)
    cli_main()


def train(argv=None) -> None:
    _run_fairseq_cli("rdrop-train", "fairseq_cli.train", argv)


def generate(argv=None) -> None:
    _run_fairseq_cli("rdrop-generate", "fairseq_cli.generate", argv)


def eval_lm(argv=None) -> None:
    _run_fairseq_cli("rdrop-eval-lm", "fairseq_cli.eval_lm", argv)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rdrop_seq", description="rdrop-seq: R-Drop criterions for fairseq"
    )
    parser.add_argument(
        "--user-dir", action="store_true", help="print the path to pass to fairseq's --user-dir"
    )
    parser.add_argument("--version", action="store_true", help="print the package version")
    args = parser.parse_args(argv)
    if args.user_dir:
        print(user_dir())
    elif args.version:
        from rdrop_seq import __version__

        print(__version__)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
