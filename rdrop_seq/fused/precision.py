"""Half-precision inputs: which dtypes, the float16 gradient scale, low-precision gradient products."""

import functools
from typing import Optional

import torch
from torch import Tensor

# float16 gradients are stored / multiplied scaled by this power of two (and
# saturated at the float16 maximum), so that the small entries of an unscaled
# logit gradient neither underflow nor lose precision before the loss scale of
# mixed-precision training is applied in the backward.
FP16_GRAD_SCALE = 1024.0
FP16_MAX = 65504.0
LOW_PRECISION = (torch.float16, torch.bfloat16)


def grad_scale(dtype: torch.dtype) -> float:
    """The factor a gradient is stored in ``dtype`` with: ``FP16_GRAD_SCALE`` for float16, else 1."""
    return FP16_GRAD_SCALE if dtype == torch.float16 else 1.0


def store_scaled(grad: Tensor, out: Tensor, scale: float, clamped: Optional[Tensor],
                 keep: Optional[Tensor] = None) -> Tensor:
    """``out = grad * scale`` in ``out``'s dtype (``scale`` 1: a plain conversion).

    In float16, entries beyond ``FP16_MAX`` (overflowed to infinity) are saturated
    at ``+-FP16_MAX``; NaN stays NaN, so that fairseq's overflow check still sees a
    broken gradient and skips the step.  The saturated entries' number, in the rows
    ``keep`` marks (``[rows]`` bool; None: all), is added to ``clamped`` (a 0-dim
    int64 tensor on the device, or None: not counted).  One rounding of
    ``grad * scale`` to ``out``'s dtype, as ``(grad * scale).to(out.dtype)``.
    """
    if scale == 1.0:
        return out.copy_(grad)  # a plain conversion: cheaper than a multiplication
    torch.mul(grad, scale, out=out)
    if out.dtype == torch.float16:
        if clamped is not None:
            inf = torch.isinf(out)
            clamped += inf.sum() if keep is None else inf.sum(-1).mul_(keep).sum()
        out.nan_to_num_(nan=float("nan"), posinf=FP16_MAX, neginf=-FP16_MAX)
    return out


_MM_OUT_DTYPE_OK = {}


@functools.lru_cache(maxsize=None)
def _cpu_has_bf16_gemm() -> bool:
    """Whether this CPU multiplies bf16 natively (asked once per process)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_low_precision_gemm(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the gradient products of ``dtype`` inputs run in that dtype, or in float32.

    On CUDA for bf16 and fp16 (float32 results where the device offers them); on a
    CPU for bf16 where it multiplies bf16 natively (about twice float32's speed, and
    no float32 copy of the projection weight), otherwise in float32.
    """
    if dtype not in LOW_PRECISION:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and dtype == torch.bfloat16 and _cpu_has_bf16_gemm()


def mm_low(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for bf16/fp16 ``a``, ``b``: on CUDA a float32 result (no rounding to the
    input dtype); on a CPU, bf16 in bf16 (float32 accumulation inside, one rounding of
    the result), fp16 in float32."""
    key = (a.device.type, a.dtype)
    if _MM_OUT_DTYPE_OK.get(key, True) and a.device.type == "cuda":
        try:
            out = torch.mm(a, b, out_dtype=torch.float32)
            _MM_OUT_DTYPE_OK[key] = True
            return out
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_OUT_DTYPE_OK[key] = False
    if a.device.type == "cpu" and a.dtype == torch.bfloat16:
        return torch.mm(a, b)
    return torch.mm(a.float(), b.float())
