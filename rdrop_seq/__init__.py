"""rdrop-seq: R-Drop (Liang et al., 2021) for fairseq.

This package is itself fairseq's ``--user-dir``: importing it registers the
criterions, model architectures and tasks.  ``python -m rdrop_seq --user-dir``
prints its path.
"""

from rdrop_seq.compat import allow_fairseq_checkpoints, bleu_of_empty_output, log_file_once, require_fairseq

__version__ = "0.1.0"

allow_fairseq_checkpoints()
require_fairseq()
log_file_once()
bleu_of_empty_output()

from rdrop_seq import criterions  # noqa: E402,F401  (registers the criterions)
from rdrop_seq import models  # noqa: E402,F401  (registers the architectures)
from rdrop_seq import tasks  # noqa: E402,F401  (registers the tasks)
