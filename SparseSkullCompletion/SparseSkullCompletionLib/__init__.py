"""SparseSkullCompletionLib: what the Sparse Skull Completion module does, apart from its panel.

The scripted module file (``SparseSkullCompletion.py``) keeps only Slicer's module class, the Widget and the
self-test; the rest lives here, in the manner of SlicerNNUNet's ``SlicerNNUNetLib``:

- ``logic.py``: ``SparseSkullCompletionLogic``, MRML nodes <-> the core's volumes and meshes, the run;
- ``jobs.py``: ``CompletionJob`` (a run in a child process), ``CompletionResults``, ``launchTraining``;
- ``dependencies.py``: the core's Python packages and their installation on first use;
- ``compat.py``: Slicer's scripted-module base classes and ``_``, with stand-ins under ``slicer-core``.

Nothing here imports Qt at import time, so the Logic runs headless. The core package ``sparseskull/``
sits beside this folder, in the module folder, which is put on ``sys.path`` so that it imports without pip.
"""

import os
import sys

_MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)

from .dependencies import ensureDependencies, installDependencies, missingDependencies  # noqa: E402
from .jobs import CompletionJob, CompletionResults, launchTraining  # noqa: E402
from .logic import SparseSkullCompletionLogic  # noqa: E402

__all__ = [
    "CompletionJob",
    "CompletionResults",
    "SparseSkullCompletionLogic",
    "ensureDependencies",
    "installDependencies",
    "launchTraining",
    "missingDependencies",
]
