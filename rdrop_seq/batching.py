"""The one place where a batch is duplicated for R-Drop's m dropout copies."""

from typing import Any, Dict

import torch
from torch import nn


def stack_copies(
    net_input: Dict[str, Any], passes: int, batch_size: int, interleave: bool = False
) -> Dict[str, Any]:
    """Return a new ``net_input`` whose batch holds ``passes`` copies of every example.

    Every tensor whose first dimension is the batch size is repeated along that
    dimension; everything else is passed through.  Copy-major by default,
    ``[x; x; ...]`` (copy ``i`` of example ``b`` at row ``i*B + b``); with
    ``interleave``, example-major (row ``b*m + i``), which keeps a batch sorted
    by length sorted.  The input dict and its tensors are left untouched, so
    the caller's sample can still be used afterwards (validation, logging, the
    trainer's own bookkeeping).
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    if passes == 1:
        return dict(net_input)
    stacked = {}
    for key, value in net_input.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.size(0) == batch_size:
            if interleave:
                stacked[key] = value.repeat_interleave(passes, dim=0)
            else:
                stacked[key] = value.repeat(passes, *([1] * (value.dim() - 1)))
        elif isinstance(value, dict):
            stacked[key] = stack_copies(value, passes, batch_size, interleave)
        else:
            stacked[key] = value
    return stacked


def to_copy_major(rows: torch.Tensor, passes: int) -> torch.Tensor:
    """An output of an interleaved batch (row ``b*m + i``) in copy-major order (row ``i*B + b``)."""
    return rows.reshape(-1, passes, *rows.shape[1:]).transpose(0, 1).reshape(rows.shape)


def needs_length_sorted_copies(model: nn.Module) -> bool:
    """Whether the model's encoder is recurrent.

    fairseq's recurrent encoders (``lstm``, speech-to-text ``berard``) pack
    their input with ``pack_padded_sequence``, which needs the batch sorted by
    decreasing source length, as fairseq's batches are; ``[x; x]`` is not, its
    interleaved form is.
    """
    encoder = getattr(model, "encoder", None)
    return isinstance(encoder, nn.Module) and any(isinstance(m, nn.RNNBase) for m in encoder.modules())


class StackedCopies:
    """The ``passes`` copies of a batch as the model gets them.

    :meth:`run` calls the model and returns its output (first element) in
    copy-major order whatever the layout the model got: interleaved for models
    that need a length-sorted batch (:func:`needs_length_sorted_copies`),
    copy-major otherwise.
    """

    def __init__(self, model: nn.Module, net_input: Dict[str, Any], passes: int, batch_size: int):
        self.passes = passes
        self.interleaved = passes > 1 and needs_length_sorted_copies(model)
        self.net_input = stack_copies(net_input, passes, batch_size, self.interleaved)

    def run(self, model: nn.Module, **kwargs):
        out = model(**self.net_input, **kwargs)
        if not self.interleaved:
            return out
        return (to_copy_major(out[0], self.passes),) + tuple(out[1:])
