"""``sentence_prediction_unlabeled``: fairseq's ``sentence_prediction`` that also mixes an
unlabeled split into every training batch, for semi-supervised R-Drop
(``--criterion rdrop_sentence_prediction --rdrop-unlabeled-alpha W``).

``--unlabeled-subset NAME`` is a split binarized like the others' ``input0`` (the same
dictionary) and without label files: the task refuses one that has them, so no label of an
unlabeled sentence is ever read.  ``--unlabeled-ratio r`` unlabeled sentences come with each
labeled one (:class:`~rdrop_seq.tasks.with_unlabeled.WithUnlabeledDataset`).  Validation and
test are the stock labeled subsets.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask
from omegaconf import II

from rdrop_seq.tasks.with_unlabeled import WithUnlabeledDataset

logger = logging.getLogger(__name__)


@dataclass
class SentencePredictionUnlabeledConfig(SentencePredictionConfig):
    unlabeled_subset: Optional[str] = field(
        default=None,
        metadata={"help": "a split of unlabeled sentences (input0/NAME, binarized with the task's "
                  "dictionary, no label files) mixed into every training batch"},
    )
    unlabeled_ratio: float = field(
        default=1.0, metadata={"help": "unlabeled sentences per labeled one in a training batch (> 0)"},
    )
    train_subset: str = II("dataset.train_subset")


@register_task("sentence_prediction_unlabeled", dataclass=SentencePredictionUnlabeledConfig)
class SentencePredictionUnlabeledTask(SentencePredictionTask):
    def __init__(self, cfg, data_dictionary, label_dictionary):
        super().__init__(cfg, data_dictionary, label_dictionary)
        if cfg.unlabeled_subset is not None and not cfg.unlabeled_ratio > 0:
            raise ValueError(f"--unlabeled-ratio={cfg.unlabeled_ratio}: must be > 0")

    def _label_files(self, split):
        base = os.path.join(self.cfg.data, "label", split)
        return [base + ext for ext in (".bin", ".idx", ".label") if os.path.exists(base + ext)]

    def load_dataset(self, split, combine=False, **kwargs):
        labeled = super().load_dataset(split, combine=combine, **kwargs)
        name = self.cfg.unlabeled_subset
        if name is None or split != self.cfg.train_subset:
            return labeled
        label_files = self._label_files(name)
        if label_files:
            raise ValueError(
                f"--unlabeled-subset {name}: the split has label files ({', '.join(label_files)}); "
                "binarize the unlabeled sentences without labels (input0 only)")
        unlabeled = super().load_dataset(name, combine=combine)
        del self.datasets[name]
        mixed = WithUnlabeledDataset(labeled, unlabeled, self.cfg.unlabeled_ratio, self.cfg.seed)
        logger.info("%s: %d labeled sentences, each with %g unlabeled ones of %s's %d",
                    split, len(labeled), self.cfg.unlabeled_ratio, name, len(unlabeled))
        self.datasets[split] = mixed
        return mixed
