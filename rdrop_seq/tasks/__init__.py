"""Tasks registered with fairseq when the package is imported."""

from rdrop_seq.tasks import sentence_prediction_unlabeled  # noqa: F401
