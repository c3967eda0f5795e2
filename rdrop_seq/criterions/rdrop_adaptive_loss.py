"""``rdrop_adaptive_loss``: R-Drop for language models with an adaptive softmax.

Objective for m = 2, summed over non-pad target tokens::

    CE(copy 1) + CE(copy 2) + alpha * KL

where CE is fairseq's ``adaptive_loss`` (head cross-entropy plus the
cross-entropy inside the target word's tail cluster, i.e. the negative
log-likelihood of the adaptive softmax) and KL the pair-mean symmetric KL
(or the divergence ``--rdrop-divergence`` names) chosen by ``--rdrop-adaptive-kl``:

``head`` (default)
    of the head distributions at every position, plus that of the target's own
    tail cluster's conditional distributions where the target is a tail word:
    no more scoring than the cross-entropy needs.  By the chain rule the full
    KL is the head's KL plus the expectation, over the tail clusters, of their
    conditional KLs; ``head`` takes the target's cluster in place of that
    expectation;
``full``
    of the full-vocabulary distributions: exact, but every tail cluster is
    scored at every position.

In training both modes take the fused, chunked loss of
:mod:`rdrop_seq.fused.adaptive` (``head``: what the adaptive softmax scores
anyway, the output projections of the head and the tails fused with the loss
where they are plain projections, as in fairseq's models; ``full``: the head and tails
called on a chunk of positions at a time, so no ``[m*N, V]`` tensor exists);
``--rdrop-no-fused`` (and ``--rdrop-divergence`` other than ``sym-kl``) take the
unfused path, which holds the log-probabilities of the whole batch (in ``full``
mode ``[m*N, V]`` of them: gigabytes per batch at WikiText-103's 267k words).

One forward over ``[x; x]``; ``sample_size`` is the original batch's token
count (as stock ``adaptive_loss``: non-pad targets).  Validation runs the stock
single pass.  Default alpha: 1, the paper's WikiText-103 setting.

Differences from the stock criterion, both deliberate:

* Tail-cluster targets are *not* masked with the pad index.  The stock
  criterion passes ``ignore_index=pad`` to the tail clusters too, where the
  targets are shifted in-cluster indices: the word ``c_i + pad`` (e.g. 2001
  with cutoffs 2000,6000) collides with the pad index and silently gets no
  tail loss.  Tail clusters never contain padding (pad < c_0), so here every
  word counts.  On batches without such a word, ``--rdrop-alpha 0
  --rdrop-no-fused`` gives bitwise the stock loss and gradients on the doubled
  batch (the fused loss: the same up to float rounding).
* Low-precision (fp16/bf16) scores are turned into log-probabilities in float32.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.adaptive_loss import AdaptiveLossConfig
from fairseq.dataclass import ChoiceEnum

from rdrop_seq.fused.adaptive import adaptive_full_rdrop_loss, adaptive_head_rdrop_loss
from rdrop_seq.adaptive_kl import adaptive_head_kl, adaptive_log_probs, cluster_positions
from rdrop_seq.criterions.base import RDropCriterionBase
from rdrop_seq.criterions.config import FusedLossConfig, RDropLMConfig
from rdrop_seq.criterions.output_layer import adaptive_scores
from rdrop_seq.losses import RDropLoss, rdrop_cross_entropy_loss, with_divergence

KL_MODES = ("full", "head")
# fairseq decoders whose model builds the adaptive softmax only for --criterion adaptive_loss
CRITERION_KEYED_DECODERS = ("LSTMDecoder", "FConvDecoder")
INCOMPATIBLE_DDP_BACKENDS = ("c10d", "pytorch_ddp")


@dataclass
class RDropAdaptiveLossConfig(AdaptiveLossConfig, RDropLMConfig, FusedLossConfig):
    rdrop_adaptive_kl: ChoiceEnum(KL_MODES) = field(
        default="head",
        metadata={
            "help": "KL between the copies' adaptive softmaxes: 'head' = of the head "
            "distributions plus the target cluster's conditional distributions "
            "(cheap: no extra scoring), 'full' = of the full-vocabulary "
            "distributions (exact; scores every tail cluster at every position, "
            "chunk by chunk; what each mode costs against stock adaptive_loss: docs/performance.md; "
            "with --rdrop-no-fused it holds [copies x tokens, vocab] log-probabilities)"
        },
    )


def ddp_backend_error(backend) -> str:
    return (
        f"rdrop_adaptive_loss needs --ddp-backend legacy_ddp, got {backend} (fairseq's "
        "default is pytorch_ddp). An adaptive softmax's tail clusters get no gradient "
        "on batches without their words, which PyTorch's DistributedDataParallel does "
        "not allow; like fairseq's adaptive_loss, this criterion therefore requires "
        "--ddp-backend legacy_ddp, also on a single device or CPU (where it changes "
        "nothing)."
    )


def _float_scores(scores):
    """Scores to turn into log-probabilities: float32 for fp16/bf16, else as they are."""
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


@register_criterion("rdrop_adaptive_loss", dataclass=RDropAdaptiveLossConfig)
class RDropAdaptiveLoss(RDropCriterionBase, FairseqCriterion):
    def __init__(self, cfg: RDropAdaptiveLossConfig, task):
        FairseqCriterion.__init__(self, task)
        self.sentence_avg = cfg.sentence_avg
        if str(cfg.rdrop_adaptive_kl) not in KL_MODES:
            raise ValueError(
                f"--rdrop-adaptive-kl={cfg.rdrop_adaptive_kl}: must be one of {', '.join(KL_MODES)}"
            )
        self.kl_mode = str(cfg.rdrop_adaptive_kl)
        self.init_rdrop(cfg)

    @classmethod
    def build_criterion(cls, cfg, task):
        backend = str(getattr(cfg, "ddp_backend", "legacy_ddp"))
        if backend in INCOMPATIBLE_DDP_BACKENDS:
            raise ValueError(ddp_backend_error(backend))
        return super().build_criterion(cfg, task)

    @staticmethod
    def adaptive_softmax(model):
        decoder = getattr(model, "decoder", None)
        asm = getattr(decoder, "adaptive_softmax", None)
        if asm is None:
            message = (
                "rdrop_adaptive_loss needs a model with an adaptive softmax (e.g. "
                "--adaptive-softmax-cutoff, or --arch rdrop_transformer_lm_adaptive_small); "
                "for a full softmax use --criterion rdrop_cross_entropy"
            )
            if type(decoder).__name__ in CRITERION_KEYED_DECODERS:
                message += (
                    f". fairseq's {type(decoder).__name__} (lstm, lstm_lm, fconv_lm) builds its "
                    "adaptive softmax only when --criterion is adaptive_loss, whatever "
                    "--adaptive-softmax-cutoff says: with R-Drop, train it with a full softmax "
                    "(rdrop_cross_entropy / rdrop_label_smoothed_cross_entropy), or use a "
                    "transformer_lm with --adaptive-softmax-cutoff"
                )
            raise ValueError(message)
        return asm

    def forward(self, model, sample, reduce=True):
        self.adaptive_softmax(model)
        # token count as stock adaptive_loss: the non-pad targets
        ntokens = int(sample["target"].ne(self.padding_idx).sum())
        return super().forward(model, dict(sample, ntokens=ntokens), reduce)

    def stock_forward(self, model, sample, reduce=True):
        """A forward without R-Drop: stock ``adaptive_loss``'s operations.

        One pass, the adaptive softmax's scores, ``log_softmax`` and ``nll_loss``
        summed per cluster in cluster order (what ``F.cross_entropy`` runs), never
        the fused loss: bitwise the stock loss and gradients on every machine, on
        batches without the pad-colliding tail word (see the module docstring;
        this criterion counts that word's tail loss, the stock one drops it).
        """
        if not reduce:
            raise ValueError("rdrop_adaptive_loss only supports reduce=True")
        return self.rdrop_forward(model, self.copies(model, sample, 1), sample, 1, 0.0)

    def loss_terms(self, model, copies, sample, passes, alpha) -> RDropLoss:
        asm = self.adaptive_softmax(model)
        net_output = copies.run(model)
        features = net_output[0]  # [m*B, T, d], copy-major
        target = model.get_targets(sample, net_output).reshape(-1)  # original [B*T]
        # the fused loss only where R-Drop runs: a single pass is the stock operations
        fused = self.fused and model.training and passes > 1
        if passes > 1 and alpha != 0 and self.kl_mode == "full":
            return self._full_terms(asm, features, target, passes, alpha, fused)
        return self._head_terms(asm, features, target, passes, alpha, fused)

    def _head_terms(self, asm, features, target, passes, alpha, fused) -> RDropLoss:
        """The stock scoring (tails only where needed); ``head`` KL if R-Drop is on."""
        stacked_target = target.repeat(passes)
        if fused:  # the head's and the tails' output projections are left to the fused loss
            scores, targets = adaptive_scores(asm, features, stacked_target)
            return adaptive_head_rdrop_loss(
                scores[0],
                scores[1:],
                targets[0][: target.numel()],
                [None if t is None else t[: t.numel() // passes] for t in targets[1:]],
                alpha=alpha,
                passes=passes,
                ignore_index=self.padding_idx,
                chunk_size=self.chunk_size,
            )
        scores, targets = asm(features, stacked_target)
        lprobs = [None if s is None else F.log_softmax(_float_scores(s), dim=-1) for s in scores]
        nll = None
        for i, (lp, tgt) in enumerate(zip(lprobs, targets)):
            if tgt is None:
                continue
            # the head's targets hold the pad index at padding; tail clusters hold
            # no padding, so nothing is ignored there (see the module docstring)
            cluster_nll = F.nll_loss(
                lp, tgt, ignore_index=self.padding_idx if i == 0 else -100, reduction="sum"
            )
            nll = cluster_nll if nll is None else nll + cluster_nll
        return with_divergence(nll, nll, alpha, passes, lambda: adaptive_head_kl(
            lprobs[0],
            lprobs[1:],
            cluster_positions(target, asm.cutoff),
            passes,
            mask=target.ne(self.padding_idx),
            divergence=self.divergence,
        ))

    def _full_terms(self, asm, features, target, passes, alpha, fused) -> RDropLoss:
        """Every tail scored at every position: full-vocabulary CE and KL."""
        x = asm.dropout_module(features.contiguous().view(-1, features.size(-1)))
        if fused:
            return adaptive_full_rdrop_loss(
                x, asm.head, asm.tail, asm.cutoff, target, alpha=alpha, passes=passes,
                ignore_index=self.padding_idx, chunk_size=self.chunk_size,
            )
        lprobs = adaptive_log_probs(asm.head(x), [tail(x) for tail in asm.tail], asm.cutoff)
        return rdrop_cross_entropy_loss(
            lprobs, target, alpha, passes, ignore_index=self.padding_idx,
            divergence=self.divergence,
        )
