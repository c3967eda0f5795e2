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
``model.get_normalized_probs``.
"""

import inspect
from typing import Optional

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


def fusable_head_weight(adaptive_softmax) -> Optional[Tensor]:
    """The ``[c_0 + k, d]`` weight whose product with an adaptive softmax's input is its head's
    scores, if its head is such a projection: a bias-free ``nn.Linear``, or fairseq's
    ``TiedHeadModule`` over a tied embedding of the input's size (no projection in between);
    never with quantisation noise (it changes the weights inside the modules' forward)."""
    if getattr(adaptive_softmax, "q_noise", 0):
        return None
    head = adaptive_softmax.head
    if type(head) is nn.Linear and head.bias is None:
        return head.weight
    if type(head) is TiedHeadModule:
        words, classes = head.word_proj, head.class_proj
        if (type(words) is TiedLinear and not words.transpose and type(classes) is nn.Linear
                and classes.bias is None):
            return torch.cat([words.weight, classes.weight])
    return None
