"""Where the extension's ``Resources`` (shipped models, the bundled sample) are.

In a checkout, an editable install and the Slicer extension they sit beside the core package, in the module's
``SparseSkullCompletion/Resources``. A wheel (``pip install .``, not editable) cannot hold files outside its
packages, so it installs them as data files under ``<prefix>/share/sparseskull`` (pyproject's
``[tool.setuptools.data-files]``), where this looks next.
"""

from __future__ import annotations

import sys
from pathlib import Path

BESIDE_PACKAGE = Path(__file__).resolve().parents[1] / "Resources"


def resource_dir(name: str) -> Path:
    """``Resources/<name>`` beside the package where it exists, else the wheel's ``<prefix>/share/sparseskull/<name>``
    where that exists, else the first (so that messages name the place a checkout has)."""
    here = BESIDE_PACKAGE / name
    if here.is_dir():
        return here
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        shared = Path(prefix) / "share" / "sparseskull" / name
        if shared.is_dir():
            return shared
    return here
