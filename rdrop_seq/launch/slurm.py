"""What SLURM's ``srun`` tells a task: the job's layout, its first host and a shared port.

:func:`slurm_task` reads this process's place in a multi-task job step from
the environment ``srun`` sets; :func:`slurm_first_host` expands the first host
of a compressed host list (the rendezvous host); :func:`slurm_port` derives a
port that every task of the same job computes alike.  Pure functions of their
arguments.
"""

from dataclasses import dataclass
from typing import Mapping, Optional

from rdrop_seq.launch.argv import LaunchError, env_int


@dataclass(frozen=True)
class SlurmTask:
    """One task of a job step with more than one task."""

    ntasks: int  # SLURM_NTASKS: tasks in the step
    nnodes: int  # nodes in the step
    tasks_per_node: int  # SLURM_NTASKS_PER_NODE, or the average for an uneven layout
    rank: int  # SLURM_PROCID
    local_id: int  # SLURM_LOCALID: the task's index on its node
    nodelist: str  # the step's (or job's) compressed host list


def slurm_task(environ: Mapping[str, str]) -> Optional[SlurmTask]:
    """This process as a task of an ``srun`` step; None outside one or with a single task."""
    ntasks = env_int(environ, "SLURM_NTASKS") or env_int(environ, "SLURM_NPROCS")
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if not (ntasks and ntasks > 1 and nodelist and environ.get("SLURM_PROCID") is not None):
        return None
    nnodes = env_int(environ, "SLURM_NNODES") or env_int(environ, "SLURM_JOB_NUM_NODES") or 1
    return SlurmTask(
        ntasks=ntasks,
        nnodes=nnodes,
        tasks_per_node=_tasks_per_node(environ, ntasks, nnodes),
        rank=env_int(environ, "SLURM_PROCID"),
        local_id=env_int(environ, "SLURM_LOCALID") or 0,
        nodelist=nodelist,
    )


def _tasks_per_node(environ: Mapping[str, str], ntasks: int, nnodes: int) -> int:
    value = environ.get("SLURM_NTASKS_PER_NODE", "")
    if value.isdigit():
        return int(value)
    # unset, or an uneven layout such as "2(x3),1": fall back to the average
    return max(1, ntasks // max(1, nnodes))


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
