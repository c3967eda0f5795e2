"""The examples: three demos (translation, language modelling, sentence classification) and
the reproduction recipes, run from the repository root as modules
(``python -m examples.translation.demo``).

What the demos share is in ``common``; each task's own code in its sub-package
(``translation``, ``language_model``, ``classification``).
"""
