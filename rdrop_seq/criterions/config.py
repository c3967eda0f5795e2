"""The R-Drop flags, each declared once, and the per-family defaults.

:class:`RDropConfig` holds the flags every R-Drop criterion takes,
:class:`FusedLossConfig` those of the criterions with a fused, chunked loss.
A criterion's dataclass combines them with the stock criterion's; a family
whose paper setting differs (language modelling: alpha = 1) changes only the
default with :func:`family_default`, so the field, its type and its help stay
declared here once.  The criterions take the dataclass as ``cfg`` and read
their flags from it.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from rdrop_seq.divergences import DIVERGENCES


@dataclass
class RDropConfig(FairseqDataclass):
    rdrop_alpha: float = field(
        default=5.0,
        metadata={
            "help": "weight alpha of the symmetric KL between the dropout copies "
            "(the paper: 5 for WMT14/IWSLT translation, 1 for language modelling); "
            "0 trains on the copies with cross-entropy only"
        },
    )
    rdrop_passes: int = field(
        default=2,
        metadata={
            "help": "number m of dropout copies of each example (>= 2); the KL is "
            "the mean over the m(m-1)/2 pairs"
        },
    )
    rdrop_every: int = field(
        default=1,
        metadata={
            "help": "apply R-Drop on every k-th update (updates N, N+k, N+2k, ... with N = "
            "--rdrop-start-update); the other updates are the stock criterion's single pass"
        },
    )
    rdrop_alpha_warmup: int = field(
        default=0,
        metadata={
            "help": "alpha grows linearly from 0 over this many updates, counted from "
            "--rdrop-start-update"
        },
    )
    rdrop_start_update: int = field(
        default=0,
        metadata={
            "help": "the first update (0-based, the trainer's num_updates) that runs R-Drop; "
            "the updates before it are the stock criterion's single pass, at its cost"
        },
    )
    rdrop_fraction: float = field(
        default=1.0,
        metadata={
            "help": "the share rho (0 < rho <= 1) of each batch's sentences that runs the "
            "dropout copies, drawn at random per update (each sentence with probability "
            "rho, reproducibly from the trainer's seed and the update); the others run once. "
            "The cross-entropy covers every copy run, the divergence the duplicated "
            "sentences: an update costs about 1 + rho (m = 2) single passes"
        },
    )
    rdrop_share_encoder: bool = field(
        default=False,
        metadata={
            "help": "encoder-decoder models: run the encoder once and give its output to "
            "every copy, the decoder runs on the copies with their own dropout masks. Saves "
            "the encoder's second pass, but changes the objective: the copies share the "
            "encoder's dropout, so the divergence regularises the decoder only. Refused for "
            "models without an encoder and a decoder"
        },
    )
    rdrop_divergence: ChoiceEnum(DIVERGENCES) = field(
        default="sym-kl",
        metadata={
            "help": "how each pair of copies is compared: 'sym-kl' = 1/2 (KL(P1||P2) + "
            "KL(P2||P1)) (the paper); 'js' = Jensen-Shannon, 1/2 KL(P1||M) + 1/2 KL(P2||M) "
            "with M = (P1 + P2)/2; 'kl-detached' = 1/2 (KL(sg P2||P1) + KL(sg P1||P2)) with "
            "sg = no gradient (each copy pulled towards the other's fixed distribution; "
            "same value as sym-kl, other gradient). The fused output layer computes "
            "sym-kl only: with js or kl-detached the token-level criterions compute the "
            "loss from the full log-probabilities, as with --rdrop-no-fused (memory of "
            "[copies x tokens, vocabulary]). With --regression-target the copies' "
            "outputs are compared by their squared difference, which needs sym-kl"
        },
    )


@dataclass
class FusedLossConfig(FairseqDataclass):
    """Flags of the criterions with a fused, chunked loss (full and adaptive softmax)."""

    rdrop_no_fused: bool = field(
        default=False,
        metadata={
            "help": "compute the training loss from the log-probabilities of the whole "
            "batch instead of the fused, chunked output layer + loss (for debugging; "
            "slower, more memory)"
        },
    )
    rdrop_chunk_size: int = field(
        default=0,
        metadata={
            "help": "target positions per chunk of the fused loss (0: automatic, from "
            "the vocabulary (or adaptive-softmax cluster) size, and the hidden size where "
            "the output projection or the adaptive softmax's full KL is fused, or the "
            "device where the loss works from the model's logits (on CPUs a chunk about "
            "the size of a cache)); refused where the fused loss is off (--rdrop-no-fused, "
            "--rdrop-divergence other than sym-kl)"
        },
    )


def family_default(name: str, default, help_text: Optional[str] = None):
    """Class decorator, placed under ``@dataclass``: the inherited field ``name``
    defaults to ``default`` in this dataclass (and its help becomes ``help_text``
    where given); its type and metadata otherwise stay those of the base."""

    def apply(cls):
        # the nearest base's field, as @dataclass resolves it
        base_field = next(
            (f for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)
             for f in dataclasses.fields(base) if f.name == name),
            None,
        )
        if base_field is None:
            raise TypeError(f"{cls.__name__}: no inherited field {name} to give a default")
        metadata = dict(base_field.metadata)
        if help_text is not None:
            metadata["help"] = help_text
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        annotations[name] = base_field.type
        cls.__annotations__ = annotations
        setattr(cls, name, field(default=default, metadata=metadata))
        return cls

    return apply


@dataclass
@family_default("rdrop_alpha", 1.0)
class RDropLMConfig(RDropConfig):
    """:class:`RDropConfig` with the paper's language-modelling default alpha = 1."""
