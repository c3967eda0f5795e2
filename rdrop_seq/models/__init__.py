"""Model architectures registered with fairseq when the package is imported.

``python -m rdrop_seq.models --param-counts`` prints their parameter counts.
"""

from rdrop_seq.models import transformer_lm  # noqa: F401
