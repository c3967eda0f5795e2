"""Command-line entry points.

``rdrop-train``: ``fairseq-train`` with this package already given as
``--user-dir`` (every fairseq-train argument passes through unchanged).
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


def train(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        from fairseq_cli.train import cli_main
    except Exception as err:
        sys.exit(f"rdrop-train: {INSTALL_HINT} (importing fairseq_cli failed: {err!r})")
    sys.argv = [sys.argv[0]] + with_user_dir(argv)
    cli_main()


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
