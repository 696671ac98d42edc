"""The MinkowskiEngine backend (the paper's engine): the same operations on ME.SparseTensor.

MinkowskiEngine has no wheels on PyPI: build it with scripts/build_minkowski.sh (a cached wheel)
or use a prebuilt one. Weights stay in our canonical layout; ME runs its kernel offsets with x
fastest, so they are reordered here (kernel_map.minkowski_order), differentiably.
"""

from __future__ import annotations

import torch

from sparseskull.sparse.functional import check_point_cap
from sparseskull.sparse.kernel_map import coarsen_to, minkowski_order
from sparseskull.sparse.tensor import CoordinateSet, SparseTensor, pack


def available() -> bool:
    try:
        _me()
    except ImportError:
        return False
    return True


def _me():
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import MinkowskiEngine as ME
    except ImportError as exc:
        raise ImportError(
            "the 'minkowski' backend needs MinkowskiEngine, which has no PyPI wheels: "
            "build one with scripts/build_minkowski.sh (see README), or use the default 'torch' backend"
        ) from exc
    return ME


def to_minkowski(x: SparseTensor, manager=None):
    """Our tensor as an ME.SparseTensor (gradients flow back to ``x.feats``)."""
    ME = _me()
    return ME.SparseTensor(
        x.feats, coordinates=x.coords, tensor_stride=x.stride, coordinate_manager=manager,
        quantization_mode=ME.SparseTensorQuantizationMode.UNWEIGHTED_SUM,
    )


def from_minkowski(y) -> SparseTensor:
    """An ME.SparseTensor as ours, in canonical (sorted) order (gradients flow back to ``y.F``)."""
    return SparseTensor.from_coords(y.C, y.F, int(y.tensor_stride[0]))


def features(x) -> torch.Tensor:
    return x.F


def with_features(x, feats: torch.Tensor):
    ME = _me()
    return ME.SparseTensor(feats, coordinate_map_key=x.coordinate_map_key, coordinate_manager=x.coordinate_manager)


def point_count(x) -> int:
    return int(x.F.shape[0])


def weight_to_minkowski(weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Canonical (K, C_in, C_out) -> ME's kernel (same shape, ME offset order)."""
    return weight[minkowski_order(kernel_size).to(weight.device)]


def weight_from_minkowski(kernel: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """ME's kernel -> canonical order (inverse of weight_to_minkowski)."""
    order = minkowski_order(kernel_size).to(kernel.device)
    out = torch.empty_like(kernel)
    out[order] = kernel
    return out


def _conv(x, weight, bias, kernel_size, stride, transpose: bool):
    ME = _me()
    from MinkowskiEngine.MinkowskiConvolution import (
        ConvolutionMode,
        MinkowskiConvolutionFunction,
        MinkowskiConvolutionTransposeFunction,
    )

    generator = ME.KernelGenerator(kernel_size=kernel_size, stride=stride, dimension=3, expand_coordinates=transpose)
    out_key = ME.CoordinateMapKey(x.coordinate_map_key.get_coordinate_size())
    fn = MinkowskiConvolutionTransposeFunction if transpose else MinkowskiConvolutionFunction
    feats = fn.apply(
        x.F, weight_to_minkowski(weight, kernel_size), generator, ConvolutionMode.DEFAULT,
        x.coordinate_map_key, out_key, x._manager,
    )
    if bias is not None:
        feats = feats + bias
    return ME.SparseTensor(feats, coordinate_map_key=out_key, coordinate_manager=x._manager)


def conv(x, weight, bias=None, kernel_size: int = 3, stride: int = 1):
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if kernel_size == 1 and stride == 1:
        feats = x.F @ weight[0]
        return with_features(x, feats if bias is None else feats + bias)
    return _conv(x, weight, bias, kernel_size, stride, transpose=False)


def generative_conv_transpose(x, weight, bias=None, kernel_size: int = 2, stride: int = 2, max_points=None, level: str = ""):
    if stride != 2:
        raise ValueError(f"generative transposed convolution supports stride 2, got {stride}")
    y = _conv(x, weight, bias, kernel_size, stride, transpose=True)
    check_point_cap(point_count(y), point_count(x), max_points, level)
    return y


def prune(x, keep: torch.Tensor):
    ME = _me()
    return ME.MinkowskiPruning()(x, keep.reshape(-1))


def union(a, b):
    ME = _me()
    return ME.MinkowskiUnion()(a, b)


def target_mask(x, target: CoordinateSet) -> torch.Tensor:
    """As functional.target_mask, for the points of an ME tensor (in ME's order)."""
    level = coarsen_to(target, int(x.tensor_stride[0]))
    return level.lookup(pack(x.C.to(level.device))) < len(level)
