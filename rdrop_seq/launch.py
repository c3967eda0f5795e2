"""How ``rdrop-train`` starts one or many training processes.

fairseq's own data parallelism (``torch.distributed`` with one process per
rank) does the training; this module only decides which fairseq flags each
process gets, from the command line, the environment a launcher left behind
and whether CUDA is there.  :func:`plan_launch` is a pure function of those
three, so every decision is unit-tested; :func:`run_local_ranks` starts the
rank processes itself when nothing else does (several ranks on CPU).

Who starts the processes, in the order the decision is made:

``--distributed-init-method`` given
    The caller runs every rank itself.  On CPU the missing CPU settings (below)
    are added, plus ``--distributed-no-spawn``: fairseq would otherwise spawn
    ``min(#GPUs, world size)`` = 0 processes and silently train nothing.
torchrun (``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK`` set)
    ``--distributed-init-method env:// --distributed-world-size WORLD_SIZE
    --distributed-rank RANK --device-id LOCAL_RANK --distributed-no-spawn``.
    fairseq's own torchrun detection computes the device as ``RANK % #GPUs``:
    wrong on the second node of a multi-node job whenever ranks are not laid
    out node by node, and a ``ZeroDivisionError`` on CPU.
SLURM (``srun``: ``SLURM_NTASKS`` > 1, ``SLURM_PROCID``, a node list)
    One task per rank (the usual ``--ntasks-per-node = GPUs per node``, and
    always on CPU): ``--distributed-init-method tcp://FIRST_NODE:PORT
    --distributed-world-size SLURM_NTASKS --distributed-rank SLURM_PROCID
    --device-id SLURM_LOCALID --distributed-no-spawn``, with ``PORT`` =
    ``--distributed-port`` or one derived from ``SLURM_JOB_ID`` (the same on
    every task of the job).  One task per node on a multi-GPU node is left to
    fairseq, which then spawns one process per GPU; only the port is filled in.
``--distributed-world-size N`` > 1, nothing else
    On GPUs fairseq spawns the N processes itself.  On CPU fairseq cannot
    (see above), so ``rdrop-train`` starts N rank processes on this machine
    with a free loopback port, streams their output (rank 0 as is, the others
    prefixed ``[rank r]``) and stops them all as soon as one fails.

On CPU every multi-process run also gets ``--distributed-backend gloo`` (NCCL
needs GPUs) and ``--ddp-backend legacy_ddp`` (fairseq passes
``device_ids=[device_id]`` to PyTorch's DistributedDataParallel, which refuses
CPU modules), unless given; an explicit ``pytorch_ddp``/``c10d`` or ``nccl`` on
CPU is an error before training starts.

Precision on CPU: ``--bf16`` works once fairseq 0.12's ``--bf16 => --tpu``
rule is lifted (the caller does that for :attr:`LaunchPlan.bf16_not_tpu`, on
GPUs as well); ``--fp16``/``--memory-efficient-fp16`` and ``--amp`` are
refused (fairseq allocates fp16 master weights on the current CUDA device and
its overflow handler moves a tensor to CUDA; ``--amp`` uses CUDA's autocast and
``GradScaler``, which are disabled on CPU, so an overflow would be applied to
the weights instead of being skipped).
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Sequence

logger = logging.getLogger("rdrop_seq.launch")

TORCHRUN_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")
# set in the environment of the rank processes rdrop-train starts itself
CHILD_ENV = "RDROP_SEQ_LAUNCHED_RANK"
CPU_UNSUPPORTED_DDP = ("pytorch_ddp", "c10d")


class LaunchError(ValueError):
    """A command line that cannot work; the message says why and what to do."""


@dataclass
class LaunchPlan:
    """What to run: this process with ``argv``, or ``local_ranks`` children.

    With ``local_ranks`` = N > 0 the caller starts N processes, rank ``r`` with
    :func:`rank_argv` ``(argv, r, "tcp://127.0.0.1:PORT")`` (see
    :func:`run_local_ranks`), instead of training in this process.
    """

    argv: List[str]
    reasons: List[str] = field(default_factory=list)  # one line per decision
    rank: Optional[int] = None  # this process's rank, when known
    local_ranks: int = 0  # > 0: start this many rank processes here (see rank_argv)
    local_port: Optional[int] = None  # their rendezvous port; None: a free one
    bf16_not_tpu: bool = False  # lift fairseq's --bf16 => --tpu rule
    quiet: bool = False  # a rank process started by rdrop-train: the parent logged

    @property
    def log_reasons(self) -> bool:
        return not self.quiet and self.rank in (None, 0)


# ---------------------------------------------------------------- argv helpers


def _names(name: str) -> Sequence[str]:
    aliases = {"--device-id": ("--device-id", "--local_rank")}
    return aliases.get(name, (name,))


def has_flag(argv: Sequence[str], name: str) -> bool:
    return any(a in _names(name) or a.split("=", 1)[0] in _names(name) for a in argv)


def flag_value(argv: Sequence[str], name: str) -> Optional[str]:
    """The value of the last ``--name V`` / ``--name=V`` in ``argv`` (argparse: last wins)."""
    value = None
    for i, arg in enumerate(argv):
        key, eq, inline = arg.partition("=")
        if key in _names(name):
            if eq:
                value = inline
            elif i + 1 < len(argv):
                value = argv[i + 1]
    return value


def _int_flag(argv, name) -> Optional[int]:
    value = flag_value(argv, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name} expects an integer, got {value!r}") from None


def env_int(environ: Mapping[str, str], name: str, default: Optional[int] = None) -> Optional[int]:
    """The integer in environment variable ``name``; ``default`` when it is unset or empty."""
    value = environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None


# ---------------------------------------------------------------- SLURM helpers


def slurm_first_host(nodelist: str) -> str:
    """The first host of a SLURM host list such as ``gpu[003-005,9],cpu1`` (-> ``gpu003``)."""
    text = nodelist.strip()
    if not text:
        raise LaunchError("the SLURM node list is empty")
    # the first top-level comma ends the first entry
    depth, end = 0, len(text)
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            end = i
            break
    entry, host = text[:end], ""
    while "[" in entry:
        prefix, rest = entry.split("[", 1)
        ranges, entry = rest.split("]", 1)
        first = ranges.split(",", 1)[0].split("-", 1)[0]
        host += prefix + first
    return host + entry


def slurm_port(environ: Mapping[str, str]) -> int:
    """A port in [20000, 60000) that every task of the same SLURM job computes alike."""
    job = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID") or "0"
    task = environ.get("SLURM_ARRAY_TASK_ID") or ""
    digits = "".join(ch for ch in job + task if ch.isdigit()) or "0"
    return 20000 + (int(digits) * 7919) % 40000


def _slurm_tasks_per_node(environ, ntasks: int, nnodes: int) -> int:
    value = environ.get("SLURM_NTASKS_PER_NODE", "")
    if value.isdigit():
        return int(value)
    # unset, or an uneven layout such as "2(x3),1": fall back to the average
    return max(1, ntasks // max(1, nnodes))


# ---------------------------------------------------------------- the plan


def plan_launch(
    argv: Sequence[str],
    environ: Mapping[str, str],
    cuda_available: bool,
    cuda_device_count: Optional[int] = None,
) -> LaunchPlan:
    """Decide how this ``rdrop-train`` invocation runs.

    ``argv``: the fairseq-train arguments; ``environ``: the process
    environment; ``cuda_available``: whether CUDA can be used at all;
    ``cuda_device_count``: the number of visible GPUs if known (used to map a
    local rank onto the visible devices and to check a world size).  Raises
    :class:`LaunchError` for settings that cannot work.  Pure: reads nothing
    else and changes nothing.
    """
    argv = [str(a) for a in argv]
    plan = LaunchPlan(argv=list(argv), quiet=bool(environ.get(CHILD_ENV)))
    if has_flag(argv, "--tpu"):
        plan.reasons.append("--tpu: launch left to fairseq and torch_xla")
        return plan
    cpu = has_flag(argv, "--cpu") or not cuda_available
    gpus = cuda_device_count if cuda_available else 0
    _check_precision(plan, cpu)

    world = _int_flag(argv, "--distributed-world-size")
    rank = _int_flag(argv, "--distributed-rank")

    # 1. the caller gave the rendezvous: it starts every rank itself
    if flag_value(argv, "--distributed-init-method") is not None:
        plan.rank = rank if rank is not None else 0
        if cpu:
            if not has_flag(argv, "--distributed-no-spawn"):
                plan.argv.append("--distributed-no-spawn")
                plan.reasons.append(
                    "CPU: --distributed-no-spawn (fairseq would spawn min(#GPUs, "
                    "world size) = 0 processes): this process is one rank"
                )
            _cpu_distributed_settings(plan)
        return plan

    # 2. torchrun / torch.distributed.launch
    if all(environ.get(k) for k in TORCHRUN_VARS):
        t_world = env_int(environ, "WORLD_SIZE")
        t_rank = env_int(environ, "RANK")
        local = env_int(environ, "LOCAL_RANK") or 0
        _require_consistent("--distributed-world-size", world, t_world, "WORLD_SIZE")
        _require_consistent("--distributed-rank", rank, t_rank, "RANK")
        device = _device_for(local, gpus, plan, "LOCAL_RANK")
        _add_rank_flags(plan, "env://", t_world, t_rank, device)
        plan.rank = t_rank
        plan.reasons.append(
            f"torchrun: rank {t_rank} of {t_world} (local rank {local}), rendezvous "
            f"env:// at {environ['MASTER_ADDR']}:{environ['MASTER_PORT']}, one process "
            "per rank (--distributed-no-spawn)"
        )
        if cpu:
            _cpu_distributed_settings(plan)
        return plan

    # 3. SLURM (srun)
    s_ntasks = env_int(environ, "SLURM_NTASKS") or env_int(environ, "SLURM_NPROCS")
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if s_ntasks and s_ntasks > 1 and nodelist and environ.get("SLURM_PROCID") is not None:
        nnodes = (
            env_int(environ, "SLURM_NNODES") or env_int(environ, "SLURM_JOB_NUM_NODES") or 1
        )
        per_node = _slurm_tasks_per_node(environ, s_ntasks, nnodes)
        s_rank = env_int(environ, "SLURM_PROCID")
        local = env_int(environ, "SLURM_LOCALID") or 0
        port = _int_flag(argv, "--distributed-port")
        if port is None or port <= 0:
            port = slurm_port(environ)
            plan.argv += ["--distributed-port", str(port)]
            port_note = f"port {port} derived from SLURM_JOB_ID"
        else:
            port_note = f"port {port} from --distributed-port"
        if not cpu and per_node == 1 and (gpus or 0) > 1:
            plan.rank = s_rank * gpus
            plan.reasons.append(
                f"SLURM: one task per node on {nnodes} node(s): fairseq spawns one "
                f"process per GPU ({gpus} on this node), {port_note}"
            )
            return plan
        _require_consistent("--distributed-world-size", world, s_ntasks, "SLURM_NTASKS")
        _require_consistent("--distributed-rank", rank, s_rank, "SLURM_PROCID")
        host = slurm_first_host(nodelist)
        device = _device_for(local, gpus, plan, "SLURM_LOCALID")
        _add_rank_flags(plan, f"tcp://{host}:{port}", s_ntasks, s_rank, device)
        plan.rank = s_rank
        plan.reasons.append(
            f"SLURM: task {s_rank} of {s_ntasks} on {nnodes} node(s) is one rank "
            f"(local id {local}), rendezvous tcp://{host}:{port} ({port_note}), "
            "--distributed-no-spawn"
        )
        if cpu:
            _cpu_distributed_settings(plan)
        return plan

    # 4. --distributed-world-size N > 1 and no launcher
    if world is not None and world > 1:
        if not cpu:
            if gpus is not None and world > gpus:
                raise LaunchError(
                    f"--distributed-world-size {world} but {gpus} GPU(s) are visible "
                    "here; for several nodes start rdrop-train with torchrun or srun"
                )
            return plan  # fairseq spawns one process per GPU
        if rank is not None:
            raise LaunchError(
                "--distributed-rank without --distributed-init-method: a rank started "
                "by hand needs the rendezvous, e.g. --distributed-init-method "
                "tcp://HOST:PORT (or leave --distributed-rank out and rdrop-train "
                "starts all the ranks)"
            )
        port = _int_flag(argv, "--distributed-port")
        plan.local_ranks = world
        plan.local_port = port if port is not None and port > 0 else None
        plan.rank = 0
        plan.reasons.append(
            f"CPU: --distributed-world-size {world}: fairseq cannot start CPU ranks (it "
            f"spawns min(#GPUs, world size) = 0), so rdrop-train starts {world} rank "
            "processes on this machine with a loopback rendezvous"
        )
        _cpu_distributed_settings(plan)
        return plan

    return plan


def rank_argv(argv: Sequence[str], rank: int, init_method: str) -> List[str]:
    """The command line of local rank ``rank`` (see :attr:`LaunchPlan.local_ranks`)."""
    return list(argv) + [
        "--distributed-init-method", init_method,
        "--distributed-rank", str(rank),
        "--distributed-no-spawn",
    ]


def _require_consistent(name, given, wanted, source):
    if given is not None and given != wanted:
        raise LaunchError(f"{name} {given} contradicts {source}={wanted} set by the launcher")


def _add_rank_flags(plan: LaunchPlan, init_method: str, world: int, rank: int, device: int):
    argv = plan.argv
    add = []
    add += ["--distributed-init-method", init_method]
    if not has_flag(argv, "--distributed-world-size"):
        add += ["--distributed-world-size", str(world)]
    if not has_flag(argv, "--distributed-rank"):
        add += ["--distributed-rank", str(rank)]
    if not has_flag(argv, "--device-id"):
        add += ["--device-id", str(device)]
    if not has_flag(argv, "--distributed-no-spawn"):
        add += ["--distributed-no-spawn"]
    plan.argv = argv + add


def _cpu_distributed_settings(plan: LaunchPlan) -> None:
    """gloo and legacy_ddp for CPU ranks, unless the user chose (and errors if wrongly)."""
    argv = plan.argv
    backend = flag_value(argv, "--distributed-backend")
    if backend is None:
        plan.argv = plan.argv + ["--distributed-backend", "gloo"]
        plan.reasons.append("CPU: --distributed-backend gloo (NCCL needs GPUs)")
    elif backend == "nccl":
        raise LaunchError(
            "--distributed-backend nccl needs GPUs; on CPU use gloo (what rdrop-train "
            "picks when the flag is left out)"
        )
    ddp = flag_value(argv, "--ddp-backend")
    if ddp is None:
        plan.argv = plan.argv + ["--ddp-backend", "legacy_ddp"]
        plan.reasons.append(
            "CPU: --ddp-backend legacy_ddp (fairseq gives PyTorch's "
            "DistributedDataParallel device_ids=[device_id], which it refuses for "
            "CPU modules)"
        )
    elif ddp in CPU_UNSUPPORTED_DDP:
        raise LaunchError(
            f"--ddp-backend {ddp} does not work on CPU: fairseq passes "
            "device_ids=[device_id] to PyTorch's DistributedDataParallel, which "
            "rejects CPU modules; use --ddp-backend legacy_ddp (the same summed "
            "gradients through fairseq's own all-reduce) or leave the flag out"
        )


def _device_for(local: int, gpus: Optional[int], plan: LaunchPlan, source: str) -> int:
    """The CUDA device of local rank ``local`` when ``gpus`` devices are visible."""
    if gpus and local >= gpus:
        device = local % gpus
        plan.reasons.append(
            f"{source}={local} but {gpus} GPU(s) visible to this process: --device-id {device}"
        )
        return device
    return local


def _check_precision(plan: LaunchPlan, cpu: bool) -> None:
    argv = plan.argv
    if cpu and (has_flag(argv, "--fp16") or has_flag(argv, "--memory-efficient-fp16")):
        raise LaunchError(
            "--fp16 needs CUDA in fairseq 0.12: its fp32 master weights are allocated "
            "on the current CUDA device and a gradient overflow moves a tensor to CUDA; "
            "on CPU use --bf16 (no loss scaling needed) or float32"
        )
    if cpu and has_flag(argv, "--amp"):
        raise LaunchError(
            "--amp needs CUDA: fairseq's AMP is CUDA autocast with CUDA's GradScaler, "
            "both disabled on CPU, where an overflowing step would then be applied to "
            "the weights instead of skipped; on CPU use --bf16 or float32"
        )
    if has_flag(argv, "--bf16") or has_flag(argv, "--memory-efficient-bf16"):
        plan.bf16_not_tpu = True
        plan.reasons.append(
            "--bf16: fairseq 0.12 turns --bf16 into --tpu; rdrop-train keeps training "
            "on this " + ("CPU" if cpu else "GPU") + " (add --tpu for a TPU)"
        )


# ---------------------------------------------------------------- running ranks


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


CHILD_CODE = "import sys; from rdrop_seq.cli import train; train(sys.argv[1:])"


def _pump(stream, prefix: bytes, lock: threading.Lock, out) -> None:
    for line in iter(stream.readline, b""):
        with lock:
            out.write(prefix + line)
            out.flush()
    stream.close()


def run_local_ranks(
    rank_argvs: Sequence[Sequence[str]],
    command: Optional[Sequence[str]] = None,
    env: Optional[Mapping[str, str]] = None,
    poll_s: float = 0.2,
    grace_s: float = 10.0,
) -> int:
    """Start one ``rdrop-train`` process per rank, stream their output, fail fast.

    Rank 0's output is passed through unchanged, the others' lines are
    prefixed with ``[rank r] ``.  Returns 0 when every rank succeeded; as soon
    as one fails the others are terminated (SIGTERM, then SIGKILL after
    ``grace_s``) and its exit status is returned (128 + N for signal N).
    ``command``: what runs a rank, its arguments appended (default: this
    Python running :func:`rdrop_seq.cli.train`).
    """
    command = list(command) if command is not None else [sys.executable, "-c", CHILD_CODE]
    child_env = dict(os.environ if env is None else env)
    child_env[CHILD_ENV] = "1"
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    if not child_env.get("OMP_NUM_THREADS"):
        threads = threads_per_rank(len(rank_argvs))
        child_env["OMP_NUM_THREADS"] = str(threads)
        logger.info(
            "CPU: OMP_NUM_THREADS=%d per rank (%d ranks share %d cores; more threads "
            "than cores stall every rank)", threads, len(rank_argvs), usable_cores()
        )
    out = getattr(sys.stdout, "buffer", None)
    if out is None:  # a text-only stdout (e.g. captured): encode ourselves
        class _Encoder:
            def write(self, b):
                sys.stdout.write(b.decode("utf-8", "replace"))

            def flush(self):
                sys.stdout.flush()

        out = _Encoder()
    lock = threading.Lock()
    procs, pumps = [], []

    def stop_all(sig=signal.SIGTERM):
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

    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        for r, argv in enumerate(rank_argvs):
            cmd = command + [str(a) for a in argv]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env)
            procs.append(p)
            prefix = b"" if r == 0 else f"[rank {r}] ".encode()
            t = threading.Thread(target=_pump, args=(p.stdout, prefix, lock, out), daemon=True)
            t.start()
            pumps.append(t)
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                r, code = failed[0]
                code = 128 - code if code < 0 else code
                logger.error("rank %d exited with status %d: stopping the other ranks", r, code)
                stop_all()
                return code
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    except BaseException:
        stop_all()
        raise
    finally:
        for t in pumps:
            t.join(timeout=5)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
