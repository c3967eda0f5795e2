"""Half-precision inputs: which dtypes, the float16 gradient scale, float32-result products."""

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


def use_low_precision_gemm(device: torch.device) -> bool:
    """Whether bf16/fp16 gradient products run in the input dtype (CUDA) or float32."""
    return device.type == "cuda"


def mm_float_out(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for bf16/fp16 ``a``, ``b`` with a float32 result (no rounding to the input dtype)."""
    key = (a.device.type, a.dtype)
    if _MM_OUT_DTYPE_OK.get(key, True) and a.device.type == "cuda":
        try:
            out = torch.mm(a, b, out_dtype=torch.float32)
            _MM_OUT_DTYPE_OK[key] = True
            return out
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_OUT_DTYPE_OK[key] = False
    return torch.mm(a.float(), b.float())
