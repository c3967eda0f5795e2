"""What every R-Drop criterion shares: schedule, the doubled forward, logging.

A concrete criterion subclasses :class:`RDropCriterionBase` next to the stock
fairseq criterion it extends and implements :meth:`loss_terms`, which gets the
``m`` stacked copies' network output and returns the summed objective.  The
base class reads the R-Drop flags from the criterion's dataclass
(:mod:`rdrop_seq.criterions.config`), decides, per update, whether R-Drop runs and with which weight,
hands a forward without R-Drop to the stock criterion's own code
(:meth:`RDropCriterionBase.stock_forward`), duplicates the batch for one with
R-Drop (without touching the caller's sample), builds the logging outputs and
reduces them.
"""

import logging
import math

import torch

from fairseq import utils
from fairseq.logging import metrics

from rdrop_seq.batching import StackedCopies, duplicated_rows, sample_rows, split_rows
from rdrop_seq.divergences import check_divergence
from rdrop_seq.losses import RDropLoss
from rdrop_seq.schedule import RDropSchedule

logger = logging.getLogger(__name__)


def _has_active_dropout(model) -> bool:
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        if type(module).__name__ == "FairseqDropout" and getattr(module, "p", 0) > 0:
            return True
    return False


def _data_parallel_rank() -> int:
    """This process's data-parallel rank (0 when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0
    from fairseq.distributed import utils as distributed_utils

    return distributed_utils.get_data_parallel_rank()


def sum_results(results):
    """One ``(loss, sample_size, logging_output)`` of several sub-batches' (every logged
    value is a sum, so the sums are the whole batch's)."""
    loss = sum(r[0] for r in results)
    sample_size = sum(r[1] for r in results)
    logging_output = {}
    for _, _, log in results:
        for key, value in log.items():
            logging_output[key] = logging_output[key] + value if key in logging_output else value
    return loss, sample_size, logging_output


def rank_seed(update_seed: int, rank: int) -> int:
    """A seed for ``rank`` derived from the trainer's per-update seed (odd-multiplier mix)."""
    return (update_seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9) % (2**63 - 1)


class RDropCriterionBase:
    """Mixin placed before a :class:`FairseqCriterion` subclass in the bases."""

    def init_rdrop(self, cfg) -> None:
        """Read the R-Drop flags from the criterion's dataclass ``cfg``
        (:class:`~rdrop_seq.criterions.config.RDropConfig`, and
        :class:`~rdrop_seq.criterions.config.FusedLossConfig` where it has those flags)."""
        self.schedule = RDropSchedule.from_config(cfg)
        no_fused = bool(getattr(cfg, "rdrop_no_fused", False))
        chunk_size = int(getattr(cfg, "rdrop_chunk_size", 0))
        if chunk_size < 0:
            raise ValueError(f"--rdrop-chunk-size={chunk_size}: must be >= 0 (0 = automatic)")
        self.divergence = check_divergence(cfg.rdrop_divergence)
        # the fused output layer computes sym-kl only (see --rdrop-divergence)
        self.fused = not no_fused and self.divergence == "sym-kl"
        if chunk_size > 0 and not self.fused:
            why = "--rdrop-no-fused" if no_fused else f"--rdrop-divergence {self.divergence}"
            raise ValueError(
                f"--rdrop-chunk-size={chunk_size} sets the chunks of the fused loss, which "
                f"{why} turns off: leave --rdrop-chunk-size out"
            )
        self.chunk_size = chunk_size or None
        self.share_encoder = bool(getattr(cfg, "rdrop_share_encoder", False))
        self._num_updates = None
        self._dropout_checked = False
        self._rank_seed = None

    # ---- schedule -------------------------------------------------------
    def set_num_updates(self, num_updates: int) -> None:
        """Pin the update counter (for use outside fairseq-train)."""
        self._num_updates = num_updates

    def num_updates(self) -> int:
        """Index of the update being computed.

        Set explicitly with :meth:`set_num_updates`, or else read from the
        ``num_updates`` value that fairseq's trainer publishes after each update
        and after restoring a checkpoint.
        """
        if self._num_updates is not None:
            return self._num_updates
        # The active aggregators, not ``metrics.get_meter("default", ...)``: after
        # a checkpoint restore the registry holds the saved (stale) meters while
        # the trainer keeps logging into the aggregators that were active.
        values = [
            agg["num_updates"].val
            for agg in metrics.get_active_aggregators()
            if "num_updates" in agg and agg["num_updates"].val is not None
        ]
        return int(max(values)) if values else 0

    def passes_and_alpha(self, model):
        """(m, alpha) for this forward: R-Drop only while training, on its updates."""
        if not model.training:
            return 1, 0.0
        if not self._dropout_checked:
            self._dropout_checked = True
            if self.schedule.alpha > 0 and not _has_active_dropout(model):
                logger.warning(
                    "R-Drop: --rdrop-alpha=%s but every dropout of the model is 0, so "
                    "the dropout copies are identical and the KL term is identically "
                    "zero; set --dropout (and/or --attention-dropout, "
                    "--activation-dropout) > 0",
                    self.schedule.alpha,
                )
        update = self.num_updates()
        if not self.schedule.active(update):
            return 1, 0.0
        return self.schedule.passes, self.schedule.alpha_at(update)

    def decorrelate_rank_dropout(self) -> None:
        """Give every data-parallel rank its own dropout masks.

        fairseq's trainer seeds torch with ``seed + num_updates`` before each
        update on every rank alike, so two ranks whose batches have the same
        shape would draw the same dropout masks for different examples.  On
        rank r > 0 the first forward of each update reseeds from that seed and
        r (reproducible on resume, as the trainer's own seeding); the later
        micro-batches of the update (``--update-freq``) continue the stream.
        Rank 0 keeps the trainer's stream, so a single process is unchanged.
        """
        rank = _data_parallel_rank()
        if rank == 0:
            return
        update_seed = torch.initial_seed()
        if update_seed == self._rank_seed:
            return  # a later micro-batch of this update
        self._rank_seed = rank_seed(update_seed, rank)
        torch.manual_seed(self._rank_seed)

    # ---- forward --------------------------------------------------------
    def loss_terms(self, model, copies: StackedCopies, sample, passes: int, alpha: float) -> RDropLoss:
        """The summed objective of the copies; ``copies.run(model)`` is the model's output on them."""
        raise NotImplementedError

    def stock_forward(self, model, sample, reduce=True):
        """A forward without R-Drop: the stock fairseq criterion's own ``forward``.

        The class after :class:`RDropCriterionBase` in the method resolution
        order is the stock criterion the R-Drop criterion extends, so its loss,
        gradients and logging output are bitwise the stock ones on every machine
        (the same operations in the same order), and none of R-Drop's code runs.
        A family whose stock criterion it does not extend overrides this.
        """
        return super().forward(model, sample, reduce)

    def forward(self, model, sample, reduce=True):
        """The stock single pass where the schedule runs no R-Drop (validation, the
        updates before ``--rdrop-start-update`` and those ``--rdrop-every`` skips), else
        :meth:`rdrop_forward` on the batch, or with ``--rdrop-fraction`` below 1
        :meth:`partial_forward`."""
        passes, alpha = self.passes_and_alpha(model)
        if model.training:
            self.decorrelate_rank_dropout()
        if passes == 1:
            return self.stock_forward(model, sample, reduce)
        if not reduce:
            raise ValueError("R-Drop criterions only support reduce=True")
        if self.schedule.fraction < 1:
            return self.partial_forward(model, sample, passes, alpha)
        return self.rdrop_forward(model, self.copies(model, sample, passes), sample, passes, alpha)

    def copies(self, model, sample, passes: int) -> StackedCopies:
        """The ``passes`` copies of ``sample``'s batch (the encoder shared where asked)."""
        return StackedCopies(model, sample["net_input"], passes, sample["target"].size(0),
                             share_encoder=self.share_encoder)

    def partial_forward(self, model, sample, passes: int, alpha: float):
        """``--rdrop-fraction rho``: the sentences :func:`duplicated_rows` picks run the
        ``passes`` copies with the divergence, the others once with their cross-entropy
        only; the two sub-batches' losses, sample sizes and logging outputs are summed::

            sum_{sentences s} sum_{copies c of s} CE(s, c)
              + alpha * sum_{duplicated s} sum_t mean_{i<j} D(P_i, P_j)

        (two forwards of the model, B - k and m * k rows, in place of one of m * B).
        """
        batch = sample["target"].size(0)
        chosen = duplicated_rows(batch, self.schedule.fraction, device=sample["target"].device)
        results = []
        for rows, m, a in zip(split_rows(batch, chosen), (1, passes), (0.0, alpha)):
            if rows is not None:
                sub = sample_rows(sample, rows, self.padding_idx)
                if m > 1 and "unlabeled" in sample:  # unlabeled sentences all run the copies
                    sub["unlabeled"] = sample["unlabeled"]
                results.append(self.rdrop_forward(model, self.copies(model, sub, m), sub, m, a))
        return sum_results(results)

    def rdrop_forward(self, model, copies: StackedCopies, sample, passes: int, alpha: float):
        """Loss over the ``passes`` dropout copies in one forward over ``[x; x]``.

        Returns ``(loss, sample_size, logging_output)`` like every fairseq
        criterion; ``sample_size`` is the original batch's token (or sentence)
        count, whatever the number of copies.
        """
        batch_size = sample["target"].size(0)
        terms = self.loss_terms(model, copies, sample, passes, alpha)
        ntokens = sample["ntokens"]
        sample_size = batch_size if self.sentence_avg else ntokens
        logging_output = {
            "loss": terms.loss.data,
            "nll_loss": terms.nll_loss.data,
            "ntokens": ntokens,
            "nsentences": batch_size,
            "sample_size": sample_size,
            # denominators over all copies, so the logged loss/ppl are per token
            "copies_sample_size": passes * sample_size,
            "copies_ntokens": passes * ntokens,
        }
        if passes > 1:
            logging_output["rdrop_kl"] = terms.kl.data
            logging_output["rdrop_ntokens"] = ntokens
        if terms.n_correct is not None:
            logging_output["n_correct"] = utils.item(terms.n_correct.data)
            logging_output["total"] = utils.item(terms.total.data)
        if terms.fp16_grad_clamped is not None:
            # on every float16 fused forward, 0 included: fairseq sums the ranks' logs by the
            # keys of their first micro-batch's, which must be the same everywhere
            logging_output["fp16_grad_clamped"] = terms.fp16_grad_clamped.data
        return terms.loss, sample_size, logging_output

    # ---- logging --------------------------------------------------------
    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Aggregate logging outputs, possibly already summed across workers.

        ``loss`` and ``nll_loss`` are per target token of every copy (base 2), so
        ``ppl`` is the true perplexity and validation figures equal the stock
        criterion's; ``rdrop_kl`` is the pair-mean symmetric KL per token (base 2);
        ``fp16_grad_clamped`` the float16 gradient entries the fused losses saturated.
        """

        def total(key, fallback=None):
            """Sum of ``key`` over the logs; a log without it counts its ``fallback`` key."""
            return utils.item(sum(
                log.get(key, log.get(fallback, 0) if fallback else 0) for log in logging_outputs
            ))

        # The stock criterion's logs (steps without R-Drop) have one copy and no
        # copies_* keys; stock cross_entropy logs no nll_loss, its loss is the NLL.
        loss_sum, nll_sum = total("loss"), total("nll_loss", fallback="loss")
        copies_sample_size = total("copies_sample_size", fallback="sample_size")
        copies_ntokens = total("copies_ntokens", fallback="ntokens")
        metrics.log_scalar(
            "loss", loss_sum / copies_sample_size / math.log(2), copies_sample_size, round=3
        )
        metrics.log_scalar(
            "nll_loss", nll_sum / copies_ntokens / math.log(2), copies_ntokens, round=3
        )
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))

        rdrop_ntokens = total("rdrop_ntokens")
        if rdrop_ntokens > 0:
            metrics.log_scalar(
                "rdrop_kl", total("rdrop_kl") / rdrop_ntokens / math.log(2), rdrop_ntokens, round=4
            )

        clamped = total("fp16_grad_clamped")  # summed over the log interval, shown where any
        if clamped > 0:
            metrics.log_scalar_sum("fp16_grad_clamped", clamped)

        n_total = total("total")
        if n_total > 0:
            metrics.log_scalar("total", n_total)
            metrics.log_scalar("n_correct", total("n_correct"))
            metrics.log_derived(
                "accuracy",
                lambda meters: round(meters["n_correct"].sum * 100.0 / meters["total"].sum, 3)
                if meters["total"].sum > 0
                else float("nan"),
            )

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
