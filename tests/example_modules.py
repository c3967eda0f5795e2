"""Load an example script as a module, with its own folder's modules.

Both demos are scripts beside a ``prepare.py`` of their own and import it as
``prepare``. In one test process a plain import would hand the second demo the
first one's ``prepare`` (and ``import demo`` whichever folder came first on
``sys.path``), so results would depend on the order tests run in.
"""

import importlib.util
import os
import sys

# module names that more than one example folder defines
SHARED_NAMES = ("demo", "prepare")


def load_example(path, name):
    """Execute the script at ``path`` as module ``name``; its ``import prepare`` finds its own."""
    folder = os.path.dirname(os.path.abspath(path))
    saved = {n: sys.modules.pop(n) for n in SHARED_NAMES if n in sys.modules}
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(folder)
        for n in SHARED_NAMES:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
