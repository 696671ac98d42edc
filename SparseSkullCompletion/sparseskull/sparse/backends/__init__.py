"""Backends: the operations of sparse/functional.py for each kind of sparse tensor.

The network code calls :func:`ops_for` on its input and never names a backend: our own
:class:`~sparseskull.sparse.SparseTensor` runs on the portable torch engine, a MinkowskiEngine
tensor on MinkowskiEngine. Weights live in one canonical layout (see kernel_map.py) and are
reordered for MinkowskiEngine inside its backend, so one state dict serves both.
"""

from __future__ import annotations

import sys
from types import ModuleType

from sparseskull.sparse import BACKENDS
from sparseskull.sparse.tensor import SparseTensor


def ops_for(x) -> ModuleType:
    """The module of operations that handles tensors of ``x``'s kind."""
    if isinstance(x, SparseTensor):
        from sparseskull.sparse.backends import torch_ops

        return torch_ops
    if type(x).__name__ == "SpconvTensor" and type(x).__module__ == "sparseskull.sparse.backends.spconv":
        from sparseskull.sparse.backends import spconv

        return spconv
    me = sys.modules.get("MinkowskiEngine")  # loaded only by whoever made an ME tensor
    if me is not None and isinstance(x, me.SparseTensor):
        from sparseskull.sparse.backends import minkowski

        return minkowski
    raise TypeError(f"not a sparse tensor of a known backend: {type(x).__name__}")


def available_backends() -> list[str]:
    from sparseskull.sparse.backends import minkowski, spconv

    return ["torch"] + [name for name, mod in (("minkowski", minkowski), ("spconv", spconv)) if mod.available()]


def to_backend(x: SparseTensor, backend: str):
    """Our tensor as a tensor of ``backend`` (torch: unchanged), with a clear error when it is not installed."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "torch":
        return x
    from sparseskull.sparse.backends import minkowski, spconv

    module = {"minkowski": minkowski, "spconv": spconv}[backend]
    if not module.available():
        raise ValueError(f"the {backend} backend is not installed here (installed: {', '.join(available_backends())})")
    return minkowski.to_minkowski(x) if backend == "minkowski" else spconv.to_spconv(x)


def from_backend(y) -> SparseTensor:
    """A tensor of any backend as ours."""
    if isinstance(y, SparseTensor):
        return y
    if type(y).__name__ == "SpconvTensor":
        from sparseskull.sparse.backends.spconv import from_spconv

        return from_spconv(y)
    from sparseskull.sparse.backends.minkowski import from_minkowski

    return from_minkowski(y)
