"""Which loss path a fairseq model allows: fused projection, logits, or log-probs.

The fused loss needs the decoder's final hidden states and the weight of its
output projection, and must compute exactly what the model would: logits =
``output_projection(features)`` and log-probabilities = float32
``log_softmax(logits)``.  That holds for fairseq's transformer decoders
(translation ``transformer*`` and ``transformer_lm*``) when they use neither an
adaptive softmax nor an overridden output layer or normalisation, and when the
model's ``forward`` hands ``features_only=True`` to the decoder (speech-to-text
transformers, for one, have a transformer decoder but a ``forward`` without
it); a model whose output is logits with a plain log-softmax takes the chunked
logits path, and anything else the generic path through
``model.get_normalized_probs``.  For an adaptive softmax, the head and each tail
cluster whose scores are a plain projection of its input are handed to the fused
loss as ``(input, weight)`` (:func:`adaptive_scores`).
"""

import inspect
from typing import List, Optional

import torch
from torch import Tensor, nn

from fairseq.models.fairseq_decoder import FairseqDecoder
from fairseq.models.fairseq_model import BaseFairseqModel, FairseqLanguageModel
from fairseq.models.transformer.transformer_decoder import TransformerDecoderBase
from fairseq.modules.adaptive_softmax import TiedHeadModule, TiedLinear


def _stock_normalization(decoder) -> bool:
    cls = type(decoder)
    return (
        getattr(decoder, "adaptive_softmax", None) is None
        and cls.get_normalized_probs is FairseqDecoder.get_normalized_probs
        and cls.get_normalized_probs_scriptable is FairseqDecoder.get_normalized_probs_scriptable
    )


def unwrapped(model):
    """The fairseq model inside fairseq's distributed wrappers (``ModuleProxyWrapper``, DDP).

    The wrappers' ``forward`` passes every argument on, and their attribute
    lookups reach the model; only the type of the model itself says what its
    ``forward`` takes.
    """
    while not isinstance(model, BaseFairseqModel) and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def forward_takes_features_only(model) -> bool:
    """Whether ``model(**net_input, features_only=True)`` returns the decoder's features.

    True for a ``forward`` that names the argument (fairseq's transformers, BART)
    and for the decoder-only ``FairseqLanguageModel.forward``, which hands its
    keyword arguments to the decoder alone.  (``FairseqEncoderDecoderModel.forward``
    would hand it to the encoder too.)
    """
    forward = type(unwrapped(model)).forward
    if forward is FairseqLanguageModel.forward:
        return True
    try:
        return "features_only" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def sharded(model) -> bool:
    """Whether (part of) the model is wrapped in a fully sharded data-parallel module.

    Its parameters are then whole only inside its own forward (``--ddp-backend
    fully_sharded``), so a loss that reads the output projection's weight after
    the forward would read a shard or freed storage.
    """
    return any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())


def fusable_output_projection(model) -> Optional[nn.Linear]:
    """The decoder's output projection if the fused loss reproduces the model exactly."""
    if sharded(model):
        return None
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, TransformerDecoderBase) or not _stock_normalization(decoder):
        return None
    if not forward_takes_features_only(model):
        return None
    if type(decoder).output_layer is not TransformerDecoderBase.output_layer:
        return None
    projection = getattr(decoder, "output_projection", None)
    return projection if isinstance(projection, nn.Linear) else None


def net_output_is_logits(model) -> bool:
    """Whether ``net_output[0]`` holds logits normalised by a plain log-softmax."""
    decoder = getattr(model, "decoder", None)
    return isinstance(decoder, FairseqDecoder) and _stock_normalization(decoder)


class _GradOfItsOwn(torch.autograd.Function):
    """The identity, whose backward gives its input a gradient in storage of its own.

    ``torch.cat``'s backward hands each input a slice of the concatenation's
    gradient; a parameter's ``.grad`` that is such a slice keeps the whole of it
    alive until the gradients are zeroed (for WikiText-103's tied head, a
    ``[2, 1024]`` class projection kept the ``[20002, 1024]`` head's 39 MiB
    over the optimizer step and into the next step's peak).
    """

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clone()


def fusable_tail_weight(adaptive_softmax, tail) -> Optional[Tensor]:
    """The ``[V_i, d_i]`` weight of a tail cluster's output layer if the cluster's scores are
    ``tail[:-1](x) @ weight.T``: fairseq's ``Sequential(projection, dropout, output)`` with a
    bias-free ``nn.Linear`` output, or a ``TiedLinear`` of an adaptive input's embedding;
    never with quantisation noise."""
    if getattr(adaptive_softmax, "q_noise", 0) or type(tail) is not nn.Sequential or len(tail) < 2:
        return None
    out = tail[-1]
    if type(out) is nn.Linear and out.bias is None:
        return out.weight
    if type(out) is TiedLinear and not out.transpose:
        return out.weight
    return None


def fusable_head_weights(adaptive_softmax) -> Optional[List[Tensor]]:
    """The row blocks of the ``[c_0 + k, d]`` weight whose product with an adaptive softmax's
    input is its head's scores, if its head is such a projection: a bias-free ``nn.Linear``
    (one block), or fairseq's ``TiedHeadModule`` over a tied embedding of the input's size (no
    projection in between: the word and the class projections' weights); never with
    quantisation noise (it changes the weights inside the modules' forward).  The fused loss
    concatenates them only while it computes the head's loss (at WikiText-103's size the
    concatenation is 39 MiB)."""
    if getattr(adaptive_softmax, "q_noise", 0):
        return None
    head = adaptive_softmax.head
    if type(head) is nn.Linear and head.bias is None:
        return [head.weight]
    if type(head) is TiedHeadModule:
        words, classes = head.word_proj, head.class_proj
        if (type(words) is TiedLinear and not words.transpose and type(classes) is nn.Linear
                and classes.bias is None):
            # the tied word weight's slice is nearly all of the concatenation's gradient; the
            # small class projection's gets a copy (see _GradOfItsOwn)
            return [words.weight, _GradOfItsOwn.apply(classes.weight)]
    return None


def adaptive_scores(adaptive_softmax, features: Tensor, target: Tensor):
    """``adaptive_softmax(features, target)`` for the fused loss: ``(scores, targets)`` as the
    module returns them, except that the head's or a tail cluster's entry is the pair
    ``(input, weight)`` of its output projection where its scores are such a product
    (:func:`fusable_head_weights`: the head's weight as a list of row blocks;
    :func:`fusable_tail_weight`): the fused loss forms those scores chunk by chunk.  Same
    modules, same order, so the same dropout masks."""
    asm = adaptive_softmax
    x = asm.dropout_module(features.contiguous().view(-1, features.size(-1)))
    targets, rows = asm.adapt_target(target)
    head_weights = fusable_head_weights(asm)
    scores = [asm.head(x) if head_weights is None else (x, head_weights)]
    for tail, r in zip(asm.tail, rows):
        if r is None:
            scores.append(None)
            continue
        weight = fusable_tail_weight(asm, tail)
        x_tail = x.index_select(0, r)
        scores.append(tail(x_tail) if weight is None else (tail[:-1](x_tail), weight))
    return scores, targets
