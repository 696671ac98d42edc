"""Sparse tensors and sparse convolutions on voxel grids, with pluggable backends.

``torch`` (default): the pure-PyTorch engine in this package, for CPU, CUDA and MPS.
``minkowski``: MinkowskiEngine, the paper's engine (optional; see sparse/backends/minkowski.py).
``spconv``: spconv 2.x, for its CUDA kernels; on CPU only behind a self-check, one thread, no backward.
The engine knows nothing of skulls.
"""

from importlib import import_module

BACKENDS = ("torch", "minkowski", "spconv")
"""The engines a network runs on (sparse/backends/). Naming them needs no torch, so a command line offers them at once."""

# PEP 562: the package's names load their module (and torch) when first asked for, not when the package is
# imported, so `sparseskull --help` answers in a fraction of a second instead of the 3-4 s of importing torch
_HOMES = {"PointExplosionError": "functional", "conv": "functional", "generative_conv_transpose": "functional", "prune": "functional",
          "target_mask": "functional", "union": "functional", "CoordinateSet": "tensor", "SparseTensor": "tensor"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


__all__ = ["BACKENDS", *sorted(_HOMES)]
