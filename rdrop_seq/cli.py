"""Command-line entry points.

``rdrop-train``, ``rdrop-generate``, ``rdrop-eval-lm``: ``fairseq-train``,
``fairseq-generate`` and ``fairseq-eval-lm`` with this package already given as
``--user-dir`` (every fairseq argument passes through unchanged).
``python -m rdrop_seq --user-dir``: print the directory to pass as ``--user-dir``.

``rdrop-train`` also chooses the process layout (torchrun, SLURM,
``--distributed-world-size``; several ranks on CPU) and the settings that make
fairseq's distributed and bfloat16 training run where it is started; see
:mod:`rdrop_seq.launch` (the decisions) and :mod:`rdrop_seq.compat` (the
fairseq fix a decision may call for).  Each decision is logged on one line.
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


def _cuda_devices():
    """(available, visible device count) without failing when torch is broken."""
    try:
        import torch

        available = torch.cuda.is_available()
        return available, (torch.cuda.device_count() if available else 0)
    except Exception as err:
        sys.exit(f"rdrop-train: {INSTALL_HINT} (importing torch failed: {err!r})")


def train(argv=None) -> None:
    import logging
    import os

    from rdrop_seq import compat, launch

    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    cuda_available, cuda_count = _cuda_devices()
    try:
        plan = launch.plan_launch(argv, os.environ, cuda_available, cuda_count)
    except launch.LaunchError as err:
        sys.exit(f"rdrop-train: {err}")
    if plan.log_reasons:
        log = logging.getLogger("rdrop_seq.launch")
        for reason in plan.reasons:
            log.info(reason)
    if plan.local_ranks:
        sys.exit(_run_local_ranks(plan))
    if plan.bf16_not_tpu:
        try:
            compat.keep_bf16_off_tpu()
        except Exception as err:
            sys.exit(f"rdrop-train: {INSTALL_HINT} (importing fairseq failed: {err!r})")
    _run_fairseq_cli("rdrop-train", "fairseq_cli.train", plan.argv)


# a free port is found, released, then bound by rank 0: another process may take it in between
PORT_TRIES = 3


def _run_local_ranks(plan) -> int:
    """Start ``plan.local_ranks`` rank processes around a rendezvous on this machine; where the
    port was this process's pick and was taken before rank 0 bound it, again on another."""
    import logging
    import threading

    from rdrop_seq import launch

    log = logging.getLogger("rdrop_seq.launch")
    for attempt in range(1, PORT_TRIES + 1):
        port = plan.local_port or launch.free_port()
        init = f"tcp://127.0.0.1:{port}"
        argvs = [launch.rank_argv(plan.argv, r, init) for r in range(plan.local_ranks)]
        log.info("starting %d rank processes, rendezvous %s", plan.local_ranks, init)
        taken = threading.Event()
        code = launch.run_local_ranks(argvs, port_taken=taken)
        if code == 0 or not taken.is_set() or plan.local_port or attempt == PORT_TRIES:
            return code
        log.warning("rendezvous port %d was taken by another process: starting again on another", port)
    return code


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
