"""What the device a run trains on asks of its command line: CPU backends and precision.

On CPU every multi-process run also gets ``--distributed-backend gloo`` (NCCL
needs GPUs) and ``--ddp-backend legacy_ddp`` (fairseq passes
``device_ids=[device_id]`` to PyTorch's DistributedDataParallel, which refuses
CPU modules), unless given; an explicit ``pytorch_ddp``/``c10d`` or ``nccl`` on
CPU is an error before training starts (:func:`cpu_distributed_flags`).

Precision (:func:`precision_reason`): ``--bf16`` works on CPUs and GPUs once
fairseq 0.12's ``--bf16 => --tpu`` rule is lifted (decided and done by
:mod:`rdrop_seq.compat`); on CPU ``--fp16``/``--memory-efficient-fp16`` and
``--amp`` are refused (fairseq allocates fp16 master weights on the current
CUDA device and its overflow handler moves a tensor to CUDA; ``--amp`` uses
CUDA's autocast and ``GradScaler``, which are disabled on CPU, so an overflow
would be applied to the weights instead of being skipped).

Pure functions of the command line: they return what to add and why, or raise
:class:`~rdrop_seq.launch.argv.LaunchError`.
"""

from typing import List, Optional, Sequence, Tuple

from rdrop_seq.compat import bf16_turns_into_tpu
from rdrop_seq.launch.argv import LaunchError, flag_value, has_flag

CPU_UNSUPPORTED_DDP = ("pytorch_ddp", "c10d")


def cpu_distributed_flags(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """gloo and legacy_ddp for CPU ranks, unless the user chose (and errors if wrongly).

    Returns the arguments to append and one reason per addition.
    """
    add: List[str] = []
    reasons: List[str] = []
    backend = flag_value(argv, "--distributed-backend")
    if backend is None:
        add += ["--distributed-backend", "gloo"]
        reasons.append("CPU: --distributed-backend gloo (NCCL needs GPUs)")
    elif backend == "nccl":
        raise LaunchError(
            "--distributed-backend nccl needs GPUs; on CPU use gloo (what rdrop-train "
            "picks when the flag is left out)"
        )
    ddp = flag_value(argv, "--ddp-backend")
    if ddp is None:
        add += ["--ddp-backend", "legacy_ddp"]
        reasons.append(
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
    return add, reasons


def precision_reason(argv: Sequence[str], cpu: bool) -> Optional[str]:
    """Refuse CUDA-only precision on CPU; None, or the reason line when ``--bf16`` must be
    kept off the TPU path (:func:`rdrop_seq.compat.bf16_turns_into_tpu`)."""
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
    if bf16_turns_into_tpu(argv):
        return (
            "--bf16: fairseq 0.12 turns --bf16 into --tpu; rdrop-train keeps training "
            "on this " + ("CPU" if cpu else "GPU") + " (add --tpu for a TPU)"
        )
    return None
