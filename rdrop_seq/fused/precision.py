"""Half-precision inputs: which dtypes, the float16 gradient scale, low-precision gradient products."""

import functools

import torch
from torch import Tensor

# float16 gradients are stored / multiplied scaled by this power of two (and
# saturated at the float16 maximum), so that the small entries of an unscaled
# logit gradient neither underflow nor lose precision before the loss scale of
# mixed-precision training is applied in the backward.
FP16_GRAD_SCALE = 1024.0
FP16_MAX = 65504.0
LOW_PRECISION = (torch.float16, torch.bfloat16)
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
