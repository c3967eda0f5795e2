"""``rdrop_sentence_prediction``: R-Drop for sentence classification and regression.

Extends fairseq's ``sentence_prediction`` criterion (the ``roberta``
classification heads, GLUE-style fine-tuning; the same flags:
``--classification-head-name``, ``--regression-target``, ``--report-mcc``, ...).
Objective for m = 2, summed over the batch's sentences::

    classification:  CE(copy 1) + CE(copy 2) + alpha * D(P1, P2)
    regression:      (y1 - t)^2 + (y2 - t)^2 + alpha * (y1 - y2)^2

with ``D`` the divergence of ``--rdrop-divergence`` (default: the symmetric KL
1/2 (KL(P1||P2) + KL(P2||P1)) of the class distributions), and for m > 2 the
mean over copy pairs.  ``sample_size`` is the original batch's sentence count,
so fairseq divides by it: per sentence, ``mean CE_1 + mean CE_2 + alpha * mean D``.

Converting alpha from the official GLUE code (its BERT fine-tuning:
``CrossEntropyLoss()`` averaged over the batch for each copy, plus
``0.5 * 1/2 (KL + reverse KL)`` *summed* over the batch; for regression, the
batch-mean ``MSELoss`` of each copy plus ``1.0 *`` the batch-mean squared
difference of the copies): its classification objective is this one with
``alpha = 0.5 * batch size``, its regression objective this one with
``alpha = 1``.

One forward over ``[x; x]`` (the sample is left untouched); R-Drop only while
training, on the updates ``--rdrop-every`` selects; validation and the other
updates run the stock criterion's own code, with the stock logging (accuracy, and
MCC, F1, Pearson/Spearman where asked) plus ``rdrop_kl`` (the pair-mean divergence
per sentence, base 2) in training.

Semi-supervised R-Drop: where the batch carries unlabeled sentences (the task
``sentence_prediction_unlabeled``), each adds only its copies' divergence, weighed by
``--rdrop-unlabeled-alpha`` (ramped up over ``--rdrop-unlabeled-warmup`` updates)::

    labeled objective above + alpha_u * sum_{unlabeled u kept} mean_{i<j} D(P_i(u), P_j(u))

with UDA's confidence mask and sharpening (:mod:`rdrop_seq.consistency`).  No label of
an unlabeled sentence is read (it has none); ``sample_size`` and the accuracy stay over
the labeled sentences; ``unlabeled_kl`` (per kept sentence, base 2) and
``unlabeled_kept`` (the share the mask keeps, %) are logged apart.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.sentence_prediction import (
    SentencePredictionConfig,
    SentencePredictionCriterion,
)
from fairseq.logging import metrics

from rdrop_seq.batching import StackedCopies
from rdrop_seq.consistency import check_unlabeled_settings, unlabeled_disagreement, unlabeled_divergence
from rdrop_seq.criterions.base import RDropCriterionBase
from rdrop_seq.criterions.config import RDropConfig, family_default
from rdrop_seq.losses import rdrop_cross_entropy_loss, rdrop_regression_loss


@dataclass
@family_default(
    "rdrop_alpha",
    1.0,
    help_text="weight alpha of the divergence between the dropout copies, per "
    "sentence (the mean CE of each copy + alpha * the mean divergence); 1 by "
    "default, the weight of the official GLUE code's regression term. Its "
    "classification term (batch-mean CE, batch-summed KL x 0.5) is alpha = "
    "0.5 x batch size here. 0 trains on the copies with the task loss only",
)
class RDropSentencePredictionConfig(SentencePredictionConfig, RDropConfig):
    rdrop_unlabeled_alpha: float = field(
        default=0.0,
        metadata={
            "help": "semi-supervised R-Drop: weight of the pair-mean divergence of the unlabeled "
            "sentences' copies (the task sentence_prediction_unlabeled mixes them into every "
            "training batch); per sentence, like --rdrop-alpha; 0 = unlabeled sentences unused"
        },
    )
    rdrop_unlabeled_warmup: int = field(
        default=0,
        metadata={"help": "the unlabeled weight grows linearly from 0 over this many updates, "
                  "counted from --rdrop-start-update"},
    )
    unlabeled_confidence: float = field(
        default=0.0,
        metadata={"help": "only unlabeled sentences whose prediction (the mean of the copies' "
                  "class distributions, no gradient) gives its top class a probability above "
                  "this count (UDA's confidence mask; 0 = every sentence)"},
    )
    unlabeled_temperature: float = field(
        default=1.0,
        metadata={"help": "with --rdrop-divergence kl-detached: the fixed side of each KL is the "
                  "other copy's distribution at this temperature (< 1 sharpens, UDA's sharpening)"},
    )


@register_criterion("rdrop_sentence_prediction", dataclass=RDropSentencePredictionConfig)
class RDropSentencePredictionCriterion(RDropCriterionBase, SentencePredictionCriterion):
    def __init__(self, cfg: RDropSentencePredictionConfig, task):
        SentencePredictionCriterion.__init__(self, cfg, task)
        self.init_rdrop(cfg)
        if cfg.rdrop_unlabeled_alpha < 0 or cfg.rdrop_unlabeled_warmup < 0:
            raise ValueError("--rdrop-unlabeled-alpha and --rdrop-unlabeled-warmup must be >= 0, got "
                             f"{cfg.rdrop_unlabeled_alpha} and {cfg.rdrop_unlabeled_warmup}")
        check_unlabeled_settings(self.divergence, cfg.unlabeled_confidence, cfg.unlabeled_temperature,
                                 self.regression_target)
        self.unlabeled = dict(alpha=float(cfg.rdrop_unlabeled_alpha), warmup=int(cfg.rdrop_unlabeled_warmup),
                              confidence=float(cfg.unlabeled_confidence),
                              temperature=float(cfg.unlabeled_temperature))
        if self.regression_target and self.divergence != "sym-kl":
            raise ValueError(
                f"--rdrop-divergence={self.divergence} compares class distributions; with "
                "--regression-target the copies' outputs are compared by their squared "
                "difference: leave --rdrop-divergence at sym-kl"
            )

    def forward(self, model, sample, reduce=True):
        heads = getattr(model, "classification_heads", None)
        if heads is None or self.classification_head_name not in heads:
            raise ValueError(
                f"rdrop_sentence_prediction needs a model with the classification head "
                f"'{self.classification_head_name}' (--classification-head-name), e.g. "
                "--arch roberta_base with --num-classes"
            )
        return super().forward(model, sample, reduce)

    def stock_forward(self, model, sample, reduce=True):
        """A forward without R-Drop: the stock criterion's ``forward``, except where it
        fails: validation predictions (``--report-mcc`` and the like) of a label dictionary
        whose labels are not integers, which the stock code converts with ``int()``; those
        take this criterion's single pass (the same loss operations) and report class
        indices (see :meth:`_label_values`)."""
        if self.keep_pred_and_targ and not model.training and not self._integer_labels():
            return self.rdrop_forward(model, self.copies(model, sample, 1), sample, 1, 0.0)
        return super().stock_forward(model, sample, reduce)

    def _integer_labels(self) -> bool:
        """Whether every class's label is an integer (regression: no labels to convert).

        The classes are the task's ``--num-classes`` first symbols after the label
        dictionary's special ones (the rest pad the dictionary: ``madeupword0000``...)."""
        if self.regression_target:
            return True
        start = self.label_dict.nspecial
        classes = getattr(self.task.cfg, "num_classes", None) or len(self.label_dict) - start
        for symbol in self.label_dict.symbols[start:start + classes]:
            try:
                int(symbol)
            except ValueError:
                return False
        return True

    def rdrop_forward(self, model, copies, sample, passes, alpha):
        """The task loss of every copy plus alpha times their pair-mean divergence."""
        batch_size = sample["target"].size(0)
        logits, _ = copies.run(
            model, features_only=True, classification_head_name=self.classification_head_name
        )
        targets = model.get_targets(sample, [logits]).view(-1)
        if self.regression_target:
            terms = rdrop_regression_loss(logits.view(-1), targets, alpha, passes)
        else:
            lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
            terms = rdrop_cross_entropy_loss(
                lprobs, targets, alpha, passes, divergence=self.divergence
            )
        loss = terms.loss + self._head_regularisers(model)
        unlabeled = self._unlabeled_terms(model, sample, passes)
        if unlabeled is not None:
            loss = loss + unlabeled["weight"] * unlabeled["unlabeled_kl"]

        logging_output = {
            "loss": loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": batch_size,
            "sample_size": batch_size,
            # denominators over all copies: the logged loss and accuracy are per copy
            "copies_nsentences": passes * batch_size,
            "copies_ntokens": passes * sample["ntokens"],
        }
        if passes > 1:
            logging_output["rdrop_kl"] = terms.kl.data
            logging_output["rdrop_nsentences"] = batch_size
        if not self.regression_target:
            preds = logits.argmax(dim=1)
            logging_output["ncorrect"] = (preds == targets.repeat(passes)).sum()
        if unlabeled is not None:
            logging_output.update({k: v for k, v in unlabeled.items() if k != "weight"})
        if self.keep_pred_and_targ and not model.training:
            logging_output.update(self._predictions(logits, targets))
        return loss, batch_size, logging_output

    def _unlabeled_terms(self, model, sample, passes):
        """Semi-supervised R-Drop: the unlabeled sentences of the batch (``sample["unlabeled"]``,
        no labels), run as ``passes`` copies; their pair-mean divergence summed over the
        sentences the confidence mask keeps (:mod:`rdrop_seq.consistency`), its weight at this
        update, and their counts.  None where there are none or their weight is 0."""
        batch = sample.get("unlabeled")
        weight = self.unlabeled["alpha"] * self.schedule.ramp_at(self.num_updates(), self.unlabeled["warmup"])
        if batch is None or passes < 2 or weight == 0:
            return None
        net_input = batch["net_input"]
        copies = StackedCopies(model, net_input, passes, net_input["src_tokens"].size(0))
        logits, _ = copies.run(model, features_only=True, classification_head_name=self.classification_head_name)
        if self.regression_target:
            total, kept = unlabeled_disagreement(logits.view(-1), passes)
        else:
            total, kept = unlabeled_divergence(logits, passes, self.divergence, self.unlabeled["confidence"],
                                               self.unlabeled["temperature"])
        return {"weight": weight, "unlabeled_kl": total, "unlabeled_kept": kept.data,
                "unlabeled_nsentences": net_input["src_tokens"].size(0)}

    @staticmethod
    def _head_regularisers(model):
        """The stock criterion's attention-head / FFN regularisers, where the model asks for them."""
        extra = 0.0
        args = getattr(model, "args", None)
        if getattr(args, "mha_reg_scale_factor", 0.0):
            extra = extra + model._get_adaptive_head_loss()
        if getattr(args, "ffn_reg_scale_factor", 0.0):
            extra = extra + model._get_adaptive_ffn_loss()
        return extra

    def _predictions(self, logits, targets):
        """Validation predictions and targets for MCC / F1 / correlations, as stock."""
        out = {}
        if self.regression_target:
            out["pred"] = logits.detach().view(-1).float().cpu().tolist()
            out["targ"] = targets.detach().float().cpu().tolist()
        else:
            out["pred"] = self._label_values(logits.argmax(dim=1))
            out["targ"] = self._label_values(targets)
        for flag in ("report_mcc", "report_acc_and_f1", "report_pearson_and_spearman"):
            if getattr(self, flag):
                out[flag] = True
        return out

    def _label_values(self, classes):
        """Class indices as the integers the label dictionary spells (stock: "0", "1", ...).

        The stock criterion converts every label symbol with ``int()`` and so
        fails on named labels (``--report-mcc`` with labels such as ``net``);
        those are reported by class index (MCC does not depend on the naming).
        """
        offset = self.label_dict.nspecial  # the labels follow the dictionary's special symbols
        symbols = self.label_dict.string(classes + offset).split()
        try:
            return [int(symbol) for symbol in symbols]
        except ValueError:
            return classes.tolist()

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """The stock metrics over every copy's sentences, plus ``rdrop_kl`` per sentence (base 2)."""
        per_copy = []
        for log in logging_outputs:
            log = dict(log)
            if "copies_nsentences" in log:
                log["sample_size"] = log["nsentences"] = log["copies_nsentences"]
                log["ntokens"] = log["copies_ntokens"]
            per_copy.append(log)
        SentencePredictionCriterion.reduce_metrics(per_copy)
        rdrop_nsentences = utils.item(sum(log.get("rdrop_nsentences", 0) for log in logging_outputs))
        if rdrop_nsentences > 0:
            kl = utils.item(sum(log.get("rdrop_kl", 0) for log in logging_outputs))
            metrics.log_scalar("rdrop_kl", kl / rdrop_nsentences / math.log(2), rdrop_nsentences, round=4)
        unlabeled = utils.item(sum(log.get("unlabeled_nsentences", 0) for log in logging_outputs))
        if unlabeled > 0:  # semi-supervised: per kept unlabeled sentence, and the share kept (%)
            kept = utils.item(sum(log.get("unlabeled_kept", 0) for log in logging_outputs))
            kl = utils.item(sum(log.get("unlabeled_kl", 0) for log in logging_outputs))
            metrics.log_scalar("unlabeled_kl", kl / max(kept, 1) / math.log(2), max(kept, 1), round=4)
            metrics.log_scalar("unlabeled_kept", 100.0 * kept / unlabeled, unlabeled, round=1)
