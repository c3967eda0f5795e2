"""How ``rdrop-train`` starts one or many training processes.

fairseq's own data parallelism (``torch.distributed`` with one process per
rank) does the training; this package only decides which fairseq flags each
process gets, from the command line, the environment a launcher left behind
and whether CUDA is there, and starts the rank processes itself when nothing
else does (several ranks on CPU).  Its modules, from the bottom up:

* :mod:`~rdrop_seq.launch.argv` — :class:`LaunchError` and reading flags and
  environment variables (shared with the recipes' launcher);
* :mod:`~rdrop_seq.launch.torchrun` and :mod:`~rdrop_seq.launch.slurm` — what
  torchrun and ``srun`` tell a process (its rank, the SLURM host list and port);
* :mod:`~rdrop_seq.launch.devices` — the CPU's distributed backends and the
  precision flags each device allows;
* :mod:`~rdrop_seq.launch.plan` — :func:`plan_launch`, the pure decision of who
  starts the ranks and with which flags, and :func:`rank_argv`;
* :mod:`~rdrop_seq.launch.supervisor` — :func:`run_local_ranks`, which starts
  the ranks on this machine, streams their output and stops them all when one fails.

The fairseq fix a plan may ask for (``--bf16`` kept off the TPU path) is
:mod:`rdrop_seq.compat`'s; :func:`rdrop_seq.cli.train` applies the plan.
"""

from rdrop_seq.launch.argv import LaunchError, env_int, flag_value, has_flag, int_flag
from rdrop_seq.launch.devices import CPU_UNSUPPORTED_DDP
from rdrop_seq.launch.plan import LaunchPlan, plan_launch, rank_argv
from rdrop_seq.launch.slurm import SlurmTask, slurm_first_host, slurm_port, slurm_task
from rdrop_seq.launch.supervisor import (
    CHILD_CODE,
    CHILD_ENV,
    free_port,
    run_local_ranks,
    threads_per_rank,
    usable_cores,
)
from rdrop_seq.launch.torchrun import TORCHRUN_VARS, TorchrunRank, torchrun_rank

__all__ = [
    "CHILD_CODE", "CHILD_ENV", "CPU_UNSUPPORTED_DDP", "TORCHRUN_VARS", "LaunchError",
    "LaunchPlan", "SlurmTask", "TorchrunRank", "env_int", "flag_value", "free_port",
    "has_flag", "int_flag", "plan_launch", "rank_argv", "run_local_ranks", "slurm_first_host",
    "slurm_port", "slurm_task", "threads_per_rank", "torchrun_rank", "usable_cores",
]
