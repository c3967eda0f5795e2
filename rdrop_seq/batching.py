"""The one place where a batch is duplicated for R-Drop's m dropout copies."""

from typing import Any, Dict

import torch


def stack_copies(net_input: Dict[str, Any], passes: int, batch_size: int) -> Dict[str, Any]:
    """Return a new ``net_input`` whose batch is ``[x; x; ...]`` (``passes`` copies).

    Every tensor whose first dimension is the batch size is repeated along that
    dimension (copy ``i`` holds rows ``i*B .. (i+1)*B - 1``); everything else is
    passed through.  The input dict and its tensors are left untouched, so the
    caller's sample can still be used afterwards (validation, logging, the
    trainer's own bookkeeping).
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    if passes == 1:
        return dict(net_input)
    stacked = {}
    for key, value in net_input.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.size(0) == batch_size:
            stacked[key] = value.repeat(passes, *([1] * (value.dim() - 1)))
        elif isinstance(value, dict):
            stacked[key] = stack_copies(value, passes, batch_size)
        else:
            stacked[key] = value
    return stacked
