"""Criterions registered with fairseq when the package is imported."""

from rdrop_seq.criterions import rdrop_label_smoothed_cross_entropy  # noqa: F401
from rdrop_seq.criterions import rdrop_cross_entropy, rdrop_adaptive_loss  # noqa: F401
from rdrop_seq.criterions import rdrop_sentence_prediction  # noqa: F401
