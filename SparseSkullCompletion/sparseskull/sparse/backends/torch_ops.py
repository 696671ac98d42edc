"""The portable PyTorch backend: the operations of sparse/functional.py, under the backend interface."""

from __future__ import annotations

import torch

from sparseskull.sparse.functional import conv, generative_conv_transpose, prune, target_mask, union
from sparseskull.sparse.tensor import SparseTensor

__all__ = ["conv", "generative_conv_transpose", "prune", "target_mask", "union", "features", "with_features", "point_count"]


def features(x: SparseTensor) -> torch.Tensor:
    return x.feats


def with_features(x: SparseTensor, feats: torch.Tensor) -> SparseTensor:
    return x.replace(feats)


def point_count(x: SparseTensor) -> int:
    return len(x)
