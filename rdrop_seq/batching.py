"""The one place where a batch is duplicated for R-Drop's m dropout copies: the copies of
every tensor of the batch (:func:`stack_copies`), the model run on them
(:class:`StackedCopies`, the encoder once where it is shared), and the rows that partial
duplication picks (:func:`duplicated_rows`, :func:`sample_rows`)."""

from typing import Any, Dict, List, Optional

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


# what an encoder-decoder model's decoder takes from the batch; the rest is the encoder's
DECODER_INPUTS = ("prev_output_tokens",)


def check_shares_encoder(model: nn.Module) -> None:
    """A ValueError unless ``model`` is an encoder-decoder model whose encoder output the
    copies can share (``--rdrop-share-encoder``)."""
    encoder = getattr(model, "encoder", None)
    if getattr(model, "decoder", None) is None or not hasattr(encoder, "reorder_encoder_out"):
        raise ValueError(
            f"--rdrop-share-encoder needs an encoder-decoder model (a fairseq encoder with "
            f"reorder_encoder_out and a decoder); {type(model).__name__} is not one: leave "
            "--rdrop-share-encoder out"
        )


class StackedCopies:
    """The ``passes`` copies of a batch as the model gets them.

    :meth:`run` calls the model and returns its output (first element) in
    copy-major order whatever the layout the model got: interleaved for models
    that need a length-sorted batch (:func:`needs_length_sorted_copies`),
    copy-major otherwise.  With ``share_encoder`` the model's encoder runs once
    on the batch and its output is repeated for the copies (fairseq's
    ``reorder_encoder_out``), the decoder on the copies of its own inputs.
    """

    def __init__(self, model: nn.Module, net_input: Dict[str, Any], passes: int, batch_size: int,
                 share_encoder: bool = False):
        self.passes = passes
        self.interleaved = passes > 1 and needs_length_sorted_copies(model)
        self.share_encoder = share_encoder and passes > 1
        if not self.share_encoder:
            self.net_input = stack_copies(net_input, passes, batch_size, self.interleaved)
            return
        check_shares_encoder(model)
        self.net_input = dict(net_input)
        for key in DECODER_INPUTS:
            self.net_input[key] = stack_copies({key: net_input[key]}, passes, batch_size,
                                               self.interleaved)[key]
        order = torch.arange(batch_size, device=net_input[DECODER_INPUTS[0]].device)
        self.encoder_order = order.repeat_interleave(passes) if self.interleaved else order.repeat(passes)

    def run(self, model: nn.Module, **kwargs):
        if self.share_encoder:
            encoder = model.encoder
            # the encoder's output, once per example, repeated for the copies as it leaves the encoder
            handle = encoder.register_forward_hook(
                lambda module, _args, out: module.reorder_encoder_out(out, self.encoder_order))
            try:
                out = model(**self.net_input, **kwargs)
            finally:
                handle.remove()
        else:
            out = model(**self.net_input, **kwargs)
        if not self.interleaved:
            return out
        return (to_copy_major(out[0], self.passes),) + tuple(out[1:])


def duplicated_rows(batch_size: int, fraction: float, device=None) -> torch.Tensor:
    """The rows (ascending) of the sentences that run the copies under partial duplication:
    each with probability ``fraction``, drawn from torch's default generator, which fairseq's
    trainer seeds from ``--seed`` and the update (so resumed runs draw the same rows)."""
    if fraction >= 1:
        return torch.arange(batch_size, device=device)
    chosen = torch.rand(batch_size) < fraction
    return chosen.nonzero().view(-1).to(device)


def sample_rows(sample: Dict[str, Any], rows: torch.Tensor, pad: int) -> Dict[str, Any]:
    """The sub-batch of ``sample`` made of ``rows`` (ascending, so a length-sorted batch stays
    sorted): every tensor whose first dimension is the batch size is indexed, the rest kept;
    ``nsentences`` and ``ntokens`` are the sub-batch's (target tokens that are not ``pad``,
    or for one target per sentence, the source lengths where the batch has them)."""
    batch_size = sample["target"].size(0)

    def take(value):
        if torch.is_tensor(value) and value.dim() > 0 and value.size(0) == batch_size:
            return value.index_select(0, rows.to(value.device))
        if isinstance(value, dict):
            return {k: take(v) for k, v in value.items()}
        return value

    # a semi-supervised batch's unlabeled sentences are a batch of their own, left out
    sub = {key: take(value) for key, value in sample.items() if key != "unlabeled"}
    target, lengths = sub["target"], sub["net_input"].get("src_lengths")
    if target.dim() > 1:
        ntokens = int(target.ne(pad).sum())
    elif lengths is not None:
        ntokens = int(lengths.sum())
    else:
        ntokens = rows.numel()
    sub.update(nsentences=rows.numel(), ntokens=ntokens)
    return sub


def split_rows(batch_size: int, chosen: torch.Tensor) -> List[Optional[torch.Tensor]]:
    """``[rows not chosen, chosen rows]``, each ascending, ``None`` where empty."""
    keep = torch.ones(batch_size, dtype=torch.bool)
    keep[chosen.cpu()] = False
    rest = keep.nonzero().view(-1).to(chosen.device)
    return [rows if rows.numel() else None for rows in (rest, chosen)]
