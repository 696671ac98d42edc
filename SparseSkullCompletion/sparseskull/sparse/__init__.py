"""Sparse tensors and sparse convolutions on voxel grids, with pluggable backends.

``torch`` (default): the pure-PyTorch engine in this package, for CPU, CUDA and MPS.
``minkowski``: MinkowskiEngine, the paper's engine (optional; see sparse/backends/minkowski.py).
``spconv``: spconv 2.x, for its CUDA kernels; on CPU only behind a self-check, one thread, no backward.
The engine knows nothing of skulls.
"""

from sparseskull.sparse.functional import PointExplosionError, conv, generative_conv_transpose, prune, target_mask, union
from sparseskull.sparse.tensor import CoordinateSet, SparseTensor

__all__ = [
    "CoordinateSet",
    "PointExplosionError",
    "SparseTensor",
    "conv",
    "generative_conv_transpose",
    "prune",
    "target_mask",
    "union",
]
