#!/usr/bin/env python3
"""How a recipe's training command is started: GPUs, update-freq, torchrun.

The recipes fix the *effective* batch of the paper's settings as
``GPUs x --update-freq = TARGET`` (16 for WMT14 Transformer big with
``--max-tokens 4096``; 32 and 24 for the WikiText-103 language models) and
compute ``--update-freq`` from the number of training processes, so the same
script trains the same model on 1 GPU, 8 GPUs or several nodes.

Where the processes come from, decided in this order:

already started by a launcher
    torchrun (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` set) or
    SLURM's ``srun`` (``SLURM_NTASKS`` > 1, ``SLURM_PROCID``): this process is
    one rank; ``rdrop-train`` runs directly and reads the rest from the
    environment (see :mod:`rdrop_seq.launch`).  World size: ``WORLD_SIZE``, or
    ``SLURM_NTASKS`` (one task per GPU; with one task per node, tasks x GPUs).
``NNODES`` / ``NPROC_PER_NODE`` (this script starts torchrun)
    ``NPROC_PER_NODE`` processes on each of ``NNODES`` nodes (defaults: 1 node,
    one process per visible GPU, 1 on a machine without GPUs).  One node:
    ``torchrun --standalone``; several: the same command on every node with
    ``NODE_RANK`` = 0..NNODES-1, ``MASTER_ADDR`` (required) and
    ``MASTER_PORT`` (default 29500).  A single process runs ``rdrop-train``
    directly.

``UPDATE_FREQ`` overrides the computed value (a note says so when it breaks
the invariant).  ``--fp16`` / ``--amp`` on a machine without a CUDA GPU stop
here, before anything starts.  A ``--save-dir`` that already holds checkpoints
is refused unless ``RESUME=1`` (fairseq continues from ``checkpoint_last.pt``)
or ``FORCE=1`` (the directory is removed first; only rank 0 removes).

:func:`plan` is a pure function of the command line, the environment and the
GPU count, so every decision is unit-tested without GPUs.  Usage::

    python examples/recipe_launch.py --gpus-x-update-freq 16 -- DATA --arch ... --save-dir DIR

``DRY_RUN=1`` prints the command instead of running it (also on a machine
without the GPUs it is meant for: ``NPROC_PER_NODE=8 DRY_RUN=1 ...``).
"""

import argparse
import glob
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Sequence

# rdrop-train's own argv and environment helpers, and what it takes for a torchrun rank
from rdrop_seq.launch.argv import LaunchError, env_int, flag_value, has_flag
from rdrop_seq.launch.torchrun import TORCHRUN_VARS

MIXED_PRECISION_CUDA_FLAGS = ("--fp16", "--memory-efficient-fp16", "--amp")


@dataclass
class Plan:
    command: List[str]  # what to execute
    world_size: int  # training processes in total
    update_freq: int
    rank: Optional[int]  # this process's global rank when it is one (0 when it starts them)
    notes: List[str] = field(default_factory=list)


def update_freq_for(world: int, target: int, override: Optional[int], notes: List[str]) -> int:
    """``--update-freq`` such that ``world x update-freq = target``."""
    if override is not None:
        if override < 1:
            raise LaunchError(f"UPDATE_FREQ={override} must be >= 1")
        if override * world != target:
            notes.append(
                f"UPDATE_FREQ={override}: {world} GPU(s) x {override} = {world * override}, "
                f"not the recipe's {target} (the effective batch differs from the paper's)"
            )
        return override
    if world > target or target % world:
        divisors = ", ".join(str(d) for d in range(1, target + 1) if target % d == 0)
        raise LaunchError(
            f"{world} training processes cannot keep GPUs x update-freq = {target} (the "
            f"paper's effective batch): use a GPU count that divides {target} ({divisors}), "
            f"or set UPDATE_FREQ yourself (above {target} GPUs, also lower --max-tokens to "
            "keep the batch)"
        )
    return target // world


def plan(
    argv: Sequence[str],
    env: Mapping[str, str],
    gpus: int,
    target: int,
    python: str = "python",
    rdrop_train: str = "rdrop-train",
    dry_run: bool = False,
) -> Plan:
    """Decide how to run ``rdrop-train argv`` (see the module docstring).

    ``gpus``: CUDA devices visible to this process (0 without CUDA);
    ``target``: the recipe's GPUs x update-freq; ``dry_run``: only show the
    command (a missing GPU is then a note).  Raises :class:`LaunchError`.
    """
    argv = [str(a) for a in argv]
    notes: List[str] = []
    if gpus == 0:
        asked = [f for f in MIXED_PRECISION_CUDA_FLAGS if has_flag(argv, f)]
        if asked:
            problem = (
                f"{asked[0]} asks for CUDA mixed precision, but no CUDA GPU is visible on "
                "this machine (torch.cuda.is_available() is False)"
            )
            if dry_run:
                notes.append(f"DRY_RUN: {problem}; this command would fail here")
            else:
                raise LaunchError(
                    f"{problem}; nothing was started. For the CPU version of the recipe use "
                    "SMOKE=1; to train without a GPU anyway use PRECISION=fp32 (or bf16)"
                )
    if has_flag(argv, "--update-freq"):
        raise LaunchError(
            "--update-freq is computed by the recipe (GPUs x update-freq = "
            f"{target}); set UPDATE_FREQ=N to override it"
        )
    override = env_int(env, "UPDATE_FREQ")

    # 1. a launcher already started this process as one rank
    if all(env.get(k) for k in TORCHRUN_VARS):
        world = env_int(env, "WORLD_SIZE")
        uf = update_freq_for(world, target, override, notes)
        notes.append(f"torchrun environment: rank {env['RANK']} of {world}")
        return Plan([rdrop_train] + argv + ["--update-freq", str(uf)], world, uf,
                    env_int(env, "RANK"), notes)
    ntasks = env_int(env, "SLURM_NTASKS") or env_int(env, "SLURM_NPROCS")
    if ntasks and ntasks > 1 and env.get("SLURM_PROCID") is not None:
        nnodes = env_int(env, "SLURM_NNODES") or env_int(env, "SLURM_JOB_NUM_NODES") or 1
        per_node = env.get("SLURM_NTASKS_PER_NODE", "")
        one_per_node = per_node == "1" or (not per_node.isdigit() and ntasks == nnodes)
        world = ntasks * gpus if (one_per_node and gpus > 1) else ntasks
        uf = update_freq_for(world, target, override, notes)
        rank = env_int(env, "SLURM_PROCID")
        notes.append(f"SLURM: task {rank} of {ntasks}, {world} training processes in all")
        return Plan([rdrop_train] + argv + ["--update-freq", str(uf)], world, uf,
                    rank if world == ntasks else rank * gpus, notes)

    # 2. this script starts the processes
    nnodes = env_int(env, "NNODES", 1)
    nproc = env_int(env, "NPROC_PER_NODE", gpus if gpus > 0 else 1)
    node_rank = env_int(env, "NODE_RANK", 0)
    if nnodes < 1 or nproc < 1:
        raise LaunchError(f"NNODES={nnodes} and NPROC_PER_NODE={nproc} must be >= 1")
    if not 0 <= node_rank < nnodes:
        raise LaunchError(f"NODE_RANK={node_rank} must be in 0..{nnodes - 1} (NNODES={nnodes})")
    if gpus > 0 and nproc > gpus:
        raise LaunchError(
            f"NPROC_PER_NODE={nproc} but {gpus} GPU(s) are visible here (CUDA_VISIBLE_DEVICES?)"
        )
    world = nnodes * nproc
    uf = update_freq_for(world, target, override, notes)
    train_argv = argv + ["--update-freq", str(uf)]
    if world == 1:
        notes.append("one training process" + (" on 1 GPU" if gpus else " (no GPU: CPU)"))
        return Plan([rdrop_train] + train_argv, 1, uf, 0, notes)
    torchrun = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1:
        torchrun += ["--standalone"]
        notes.append(f"torchrun --standalone: {nproc} processes on this node")
    else:
        addr = env.get("MASTER_ADDR")
        if not addr:
            raise LaunchError(
                f"NNODES={nnodes} needs MASTER_ADDR (the host name or address of the node "
                "with NODE_RANK=0, reachable from every node)"
            )
        port = env_int(env, "MASTER_PORT", 29500)
        torchrun += ["--nnodes", str(nnodes), "--node-rank", str(node_rank),
                     "--master-addr", addr, "--master-port", str(port)]
        notes.append(
            f"torchrun: node {node_rank} of {nnodes}, {nproc} processes per node, "
            f"rendezvous {addr}:{port}; start the same command on every node"
        )
    command = torchrun + ["--no-python", rdrop_train] + train_argv
    return Plan(command, world, uf, node_rank * nproc, notes)


def existing_checkpoints(save_dir: Optional[str]) -> List[str]:
    if not save_dir or not os.path.isdir(save_dir):
        return []
    return sorted(glob.glob(os.path.join(save_dir, "checkpoint*.pt")))


def claim_save_dir(save_dir: Optional[str], env: Mapping[str, str], rank: Optional[int], say) -> None:
    """Refuse to train over checkpoints unless RESUME=1 or FORCE=1 (see the module doc)."""
    found = existing_checkpoints(save_dir)
    if not found or rank not in (None, 0):
        return
    if env.get("RESUME") == "1":
        say(f"RESUME=1: continuing from {save_dir}/checkpoint_last.pt")
    elif env.get("FORCE") == "1":
        say(f"FORCE=1: removing {save_dir} ({len(found)} checkpoint(s))")
        shutil.rmtree(save_dir)
    else:
        raise LaunchError(
            f"--save-dir {save_dir} already holds {len(found)} checkpoint(s) that this run "
            "would overwrite: set RESUME=1 to continue that run, FORCE=1 to delete them and "
            "start over, or choose another SAVE_DIR"
        )


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def find_rdrop_train() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "rdrop-train")
    found = beside if os.path.exists(beside) else shutil.which("rdrop-train")
    if not found:
        raise LaunchError(
            f"rdrop-train not found beside {sys.executable} or on PATH: install rdrop-seq "
            "in this environment (pip install -e .)"
        )
    return found


def main(args=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus-x-update-freq", type=int, required=True, metavar="N",
                        help="the recipe's GPUs x --update-freq")
    parser.add_argument("--name", default="train", help="prefix of the messages")
    parser.add_argument("fairseq_args", nargs=argparse.REMAINDER,
                        help="-- then the fairseq-train arguments")
    ns = parser.parse_args(args)
    fairseq_args = ns.fairseq_args[1:] if ns.fairseq_args[:1] == ["--"] else ns.fairseq_args

    def say(msg):
        print(f"[{ns.name}] {msg}", flush=True)

    env = os.environ
    try:
        dry_run = env.get("DRY_RUN") == "1"
        p = plan(fairseq_args, env, visible_gpus(), ns.gpus_x_update_freq,
                 python=sys.executable, rdrop_train=find_rdrop_train(), dry_run=dry_run)
        for note in p.notes:
            say(note)
        say(f"{p.world_size} training process(es) x --update-freq {p.update_freq} "
            f"(recipe: GPUs x update-freq = {ns.gpus_x_update_freq})")
        if dry_run:
            print(shlex.join(p.command), flush=True)
            return 0
        claim_save_dir(flag_value(fairseq_args, "--save-dir"), env, p.rank, say)
    except LaunchError as err:
        print(f"[{ns.name}] error: {err}", file=sys.stderr, flush=True)
        return 2
    say("running: " + shlex.join(p.command))
    os.execv(p.command[0], p.command)


if __name__ == "__main__":
    sys.exit(main())
