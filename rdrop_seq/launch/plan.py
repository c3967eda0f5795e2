"""The launch plan: which fairseq flags this ``rdrop-train`` process gets, and who starts the ranks.

:func:`plan_launch` is a pure function of the command line, the environment a
launcher left behind and whether CUDA is there, so every decision is
unit-tested; it returns a :class:`LaunchPlan`.  Who starts the processes, in
the order the decision is made (one helper each):

``--distributed-init-method`` given (:func:`_caller_ranks`)
    The caller runs every rank itself.  On CPU the missing CPU settings are
    added, plus ``--distributed-no-spawn``: fairseq would otherwise spawn
    ``min(#GPUs, world size)`` = 0 processes and silently train nothing.
torchrun (:func:`_torchrun_ranks`)
    ``--distributed-init-method env:// --distributed-world-size WORLD_SIZE
    --distributed-rank RANK --device-id LOCAL_RANK --distributed-no-spawn``.
    fairseq's own torchrun detection computes the device as ``RANK % #GPUs``:
    wrong on the second node of a multi-node job whenever ranks are not laid
    out node by node, and a ``ZeroDivisionError`` on CPU.
SLURM (:func:`_slurm_ranks`)
    One task per rank (the usual ``--ntasks-per-node = GPUs per node``, and
    always on CPU): ``--distributed-init-method tcp://FIRST_NODE:PORT
    --distributed-world-size SLURM_NTASKS --distributed-rank SLURM_PROCID
    --device-id SLURM_LOCALID --distributed-no-spawn``, with ``PORT`` =
    ``--distributed-port`` or one derived from ``SLURM_JOB_ID`` (the same on
    every task of the job).  One task per node on a multi-GPU node is left to
    fairseq, which then spawns one process per GPU; only the port is filled in.
``--distributed-world-size N`` > 1, nothing else (:func:`_world_size_ranks`)
    On GPUs fairseq spawns the N processes itself.  On CPU fairseq cannot
    (see above), so ``rdrop-train`` starts N rank processes on this machine
    (:mod:`rdrop_seq.launch.supervisor`) with a free loopback port.

The CPU settings and the precision checks are :mod:`rdrop_seq.launch.devices`'.
"""

from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Sequence

from rdrop_seq.launch.argv import LaunchError, flag_value, has_flag, int_flag
from rdrop_seq.launch.devices import cpu_distributed_flags, precision_reason
from rdrop_seq.launch.slurm import SlurmTask, slurm_first_host, slurm_port, slurm_task
from rdrop_seq.launch.supervisor import CHILD_ENV
from rdrop_seq.launch.torchrun import TorchrunRank, torchrun_rank


@dataclass
class LaunchPlan:
    """What to run: this process with ``argv``, or ``local_ranks`` children.

    With ``local_ranks`` = N > 0 the caller starts N processes, rank ``r`` with
    :func:`rank_argv` ``(argv, r, "tcp://127.0.0.1:PORT")`` (see
    :func:`~rdrop_seq.launch.supervisor.run_local_ranks`), instead of training
    in this process.
    """

    argv: List[str]
    reasons: List[str] = field(default_factory=list)  # one line per decision
    rank: Optional[int] = None  # this process's rank, when known
    local_ranks: int = 0  # > 0: start this many rank processes here (see rank_argv)
    local_port: Optional[int] = None  # their rendezvous port; None: a free one
    bf16_not_tpu: bool = False  # lift fairseq's --bf16 => --tpu rule (rdrop_seq.compat)
    quiet: bool = False  # a rank process started by rdrop-train: the parent logged

    @property
    def log_reasons(self) -> bool:
        return not self.quiet and self.rank in (None, 0)


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
    bf16 = precision_reason(argv, cpu)
    if bf16 is not None:
        plan.bf16_not_tpu = True
        plan.reasons.append(bf16)
    world = int_flag(argv, "--distributed-world-size")
    rank = int_flag(argv, "--distributed-rank")

    if flag_value(argv, "--distributed-init-method") is not None:
        _caller_ranks(plan, rank, cpu)
        return plan
    torchrun = torchrun_rank(environ)
    if torchrun is not None:
        _torchrun_ranks(plan, torchrun, world, rank, cpu, gpus)
        return plan
    slurm = slurm_task(environ)
    if slurm is not None:
        _slurm_ranks(plan, slurm, environ, world, rank, cpu, gpus)
        return plan
    if world is not None and world > 1:
        _world_size_ranks(plan, world, rank, cpu, gpus)
    return plan


def _caller_ranks(plan: LaunchPlan, rank: Optional[int], cpu: bool) -> None:
    """The caller gave the rendezvous: it starts every rank itself."""
    plan.rank = rank if rank is not None else 0
    if cpu:
        if not has_flag(plan.argv, "--distributed-no-spawn"):
            plan.argv.append("--distributed-no-spawn")
            plan.reasons.append(
                "CPU: --distributed-no-spawn (fairseq would spawn min(#GPUs, "
                "world size) = 0 processes): this process is one rank"
            )
        _add_cpu_flags(plan)


def _torchrun_ranks(plan, t: TorchrunRank, world, rank, cpu: bool, gpus) -> None:
    """torchrun / torch.distributed.launch started this process as one rank."""
    _require_consistent("--distributed-world-size", world, t.world, "WORLD_SIZE")
    _require_consistent("--distributed-rank", rank, t.rank, "RANK")
    device = _device_for(t.local_rank, gpus, plan, "LOCAL_RANK")
    _add_rank_flags(plan, "env://", t.world, t.rank, device)
    plan.rank = t.rank
    plan.reasons.append(
        f"torchrun: rank {t.rank} of {t.world} (local rank {t.local_rank}), rendezvous "
        f"env:// at {t.master}, one process per rank (--distributed-no-spawn)"
    )
    if cpu:
        _add_cpu_flags(plan)


def _slurm_ranks(plan, s: SlurmTask, environ, world, rank, cpu: bool, gpus) -> None:
    """``srun`` started this process as one task of several."""
    port = int_flag(plan.argv, "--distributed-port")
    if port is None or port <= 0:
        port = slurm_port(environ)
        plan.argv += ["--distributed-port", str(port)]
        port_note = f"port {port} derived from SLURM_JOB_ID"
    else:
        port_note = f"port {port} from --distributed-port"
    if not cpu and s.tasks_per_node == 1 and (gpus or 0) > 1:
        plan.rank = s.rank * gpus
        plan.reasons.append(
            f"SLURM: one task per node on {s.nnodes} node(s): fairseq spawns one "
            f"process per GPU ({gpus} on this node), {port_note}"
        )
        return
    _require_consistent("--distributed-world-size", world, s.ntasks, "SLURM_NTASKS")
    _require_consistent("--distributed-rank", rank, s.rank, "SLURM_PROCID")
    host = slurm_first_host(s.nodelist)
    device = _device_for(s.local_id, gpus, plan, "SLURM_LOCALID")
    _add_rank_flags(plan, f"tcp://{host}:{port}", s.ntasks, s.rank, device)
    plan.rank = s.rank
    plan.reasons.append(
        f"SLURM: task {s.rank} of {s.ntasks} on {s.nnodes} node(s) is one rank "
        f"(local id {s.local_id}), rendezvous tcp://{host}:{port} ({port_note}), "
        "--distributed-no-spawn"
    )
    if cpu:
        _add_cpu_flags(plan)


def _world_size_ranks(plan: LaunchPlan, world: int, rank, cpu: bool, gpus) -> None:
    """``--distributed-world-size N`` > 1 and no launcher: fairseq's spawn, or ours on CPU."""
    if not cpu:
        if gpus is not None and world > gpus:
            raise LaunchError(
                f"--distributed-world-size {world} but {gpus} GPU(s) are visible "
                "here; for several nodes start rdrop-train with torchrun or srun"
            )
        return  # fairseq spawns one process per GPU
    if rank is not None:
        raise LaunchError(
            "--distributed-rank without --distributed-init-method: a rank started "
            "by hand needs the rendezvous, e.g. --distributed-init-method "
            "tcp://HOST:PORT (or leave --distributed-rank out and rdrop-train "
            "starts all the ranks)"
        )
    port = int_flag(plan.argv, "--distributed-port")
    plan.local_ranks = world
    plan.local_port = port if port is not None and port > 0 else None
    plan.rank = 0
    plan.reasons.append(
        f"CPU: --distributed-world-size {world}: fairseq cannot start CPU ranks (it "
        f"spawns min(#GPUs, world size) = 0), so rdrop-train starts {world} rank "
        "processes on this machine with a loopback rendezvous"
    )
    _add_cpu_flags(plan)


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
    add = ["--distributed-init-method", init_method]
    if not has_flag(argv, "--distributed-world-size"):
        add += ["--distributed-world-size", str(world)]
    if not has_flag(argv, "--distributed-rank"):
        add += ["--distributed-rank", str(rank)]
    if not has_flag(argv, "--device-id"):
        add += ["--device-id", str(device)]
    if not has_flag(argv, "--distributed-no-spawn"):
        add += ["--distributed-no-spawn"]
    plan.argv = argv + add


def _add_cpu_flags(plan: LaunchPlan) -> None:
    add, reasons = cpu_distributed_flags(plan.argv)
    plan.argv = plan.argv + add
    plan.reasons += reasons


def _device_for(local: int, gpus: Optional[int], plan: LaunchPlan, source: str) -> int:
    """The CUDA device of local rank ``local`` when ``gpus`` devices are visible."""
    if gpus and local >= gpus:
        device = local % gpus
        plan.reasons.append(
            f"{source}={local} but {gpus} GPU(s) visible to this process: --device-id {device}"
        )
        return device
    return local
