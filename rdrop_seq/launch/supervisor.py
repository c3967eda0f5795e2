"""Starting several rank processes on this machine and watching them (several ranks on CPU).

:func:`run_local_ranks` starts one ``rdrop-train`` process per rank, streams
their output (rank 0 as is, the others prefixed ``[rank r]``) and stops them
all as soon as one fails or this process gets SIGTERM.  The rank processes get
:data:`CHILD_ENV` in their environment, so that they do not log the launch
decisions again, and ``OMP_NUM_THREADS`` such that the ranks share the cores
(:func:`threads_per_rank`) unless it is set.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List, Mapping, Optional, Sequence

logger = logging.getLogger("rdrop_seq.launch")

# set in the environment of the rank processes rdrop-train starts itself
CHILD_ENV = "RDROP_SEQ_LAUNCHED_RANK"
CHILD_CODE = "import sys; from rdrop_seq.cli import train; train(sys.argv[1:])"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_rank(ranks: int, cores: Optional[int] = None) -> int:
    """Intra-op threads for each of ``ranks`` processes sharing ``cores`` cores."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, ranks))


def _rank_env(env: Optional[Mapping[str, str]], ranks: int) -> dict:
    """The rank processes' environment: ``env`` (default: this one) marked as a child's."""
    child_env = dict(os.environ if env is None else env)
    child_env[CHILD_ENV] = "1"
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    if not child_env.get("OMP_NUM_THREADS"):
        threads = threads_per_rank(ranks)
        child_env["OMP_NUM_THREADS"] = str(threads)
        logger.info(
            "CPU: OMP_NUM_THREADS=%d per rank (%d ranks share %d cores; more threads "
            "than cores stall every rank)", threads, ranks, usable_cores()
        )
    return child_env


class _TextEncoder:
    """A byte stream over a text-only stdout (e.g. a captured one)."""

    def write(self, b):
        sys.stdout.write(b.decode("utf-8", "replace"))

    def flush(self):
        sys.stdout.flush()


# what a rank prints when the rendezvous port it was given is taken (torch's TCPStore)
PORT_IN_USE = (b"EADDRINUSE", b"Address already in use", b"address already in use")


def _pump(stream, prefix: bytes, lock: threading.Lock, out, port_taken=None) -> None:
    for line in iter(stream.readline, b""):
        with lock:
            out.write(prefix + line)
            out.flush()
        if port_taken is not None and any(marker in line for marker in PORT_IN_USE):
            port_taken.set()
    stream.close()


def _stop_all(procs: List[subprocess.Popen], grace_s: float, sig=signal.SIGTERM) -> None:
    """Send ``sig`` to the running processes; kill those still running after ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def run_local_ranks(
    rank_argvs: Sequence[Sequence[str]],
    command: Optional[Sequence[str]] = None,
    env: Optional[Mapping[str, str]] = None,
    poll_s: float = 0.2,
    grace_s: float = 10.0,
    port_taken: Optional[threading.Event] = None,
) -> int:
    """Start one ``rdrop-train`` process per rank, stream their output, fail fast.

    Rank 0's output is passed through unchanged, the others' lines are
    prefixed with ``[rank r] ``.  Returns 0 when every rank succeeded; as soon
    as one fails the others are terminated (SIGTERM, then SIGKILL after
    ``grace_s``) and its exit status is returned (128 + N for signal N).
    ``command``: what runs a rank, its arguments appended (default: this
    Python running :func:`rdrop_seq.cli.train`).  ``port_taken`` is set when a rank
    reports that the rendezvous port was taken (another process bound it first).
    """
    command = list(command) if command is not None else [sys.executable, "-c", CHILD_CODE]
    child_env = _rank_env(env, len(rank_argvs))
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        out = _TextEncoder()
    lock = threading.Lock()
    procs, pumps = [], []
    previous = signal.getsignal(signal.SIGTERM)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for r, argv in enumerate(rank_argvs):
            cmd = command + [str(a) for a in argv]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env)
            procs.append(p)
            prefix = b"" if r == 0 else f"[rank {r}] ".encode()
            t = threading.Thread(target=_pump, args=(p.stdout, prefix, lock, out, port_taken), daemon=True)
            t.start()
            pumps.append(t)
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                r, code = failed[0]
                code = 128 - code if code < 0 else code
                logger.error("rank %d exited with status %d: stopping the other ranks", r, code)
                _stop_all(procs, grace_s)
                return code
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    except BaseException:
        _stop_all(procs, grace_s)
        raise
    finally:
        for t in pumps:
            t.join(timeout=5)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
