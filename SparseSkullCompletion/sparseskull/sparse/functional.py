"""Sparse operations on :class:`SparseTensor` (the portable PyTorch backend).

Every convolution is one gather-GEMM over a neighbour table (``kernel_map``): the features of the
K neighbours of a block of output points are gathered into a (rows, K * C_in) matrix and multiplied
by the (K * C_in, C_out) weight. A custom autograd function recomputes those blocks in the backward
pass instead of keeping them, so memory stays at the features plus the table.
"""

from __future__ import annotations

import torch

from sparseskull.sparse.kernel_map import cached_map, coarsen_to, downsample_coords, expand_coords, expand_pairs, row_blocks
from sparseskull.sparse.tensor import CoordinateSet, SparseTensor

ROWS_PER_BLOCK = 2048  # rows per gather-GEMM block: small blocks stay in cache (measured best at 256^3)


class PointExplosionError(RuntimeError):
    """A generative layer created more points than the configured cap."""


def check_point_cap(created: int, inputs: int, max_points: int | None, level: str = "") -> None:
    """Raise PointExplosionError when a generative layer made more than ``max_points`` points."""
    if max_points is not None and created > max_points:
        where = f" at {level}" if level else ""
        raise PointExplosionError(
            f"the generative layer{where} created {created:,} points from {inputs:,}, over the cap of {max_points:,}; "
            "the network is keeping too much (untrained or out-of-distribution input), or raise the cap"
        )


def _gather_rows(source: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(R, K) row indices -> (R, K * C) gathered rows (index_select is a row memcpy, 4x faster than [] here)."""
    return source.index_select(0, table.reshape(-1)).reshape(table.shape[0], -1)


def _padded(source: torch.Tensor) -> torch.Tensor:
    """``source`` with a zero row appended: the row absent neighbours read. A fused layer's output
    already has one behind it in its storage (see _gather_gemm), so no copy of the features is made."""
    n, c = source.shape
    if source.is_contiguous() and source.untyped_storage().nbytes() >= (source.storage_offset() + (n + 1) * c) * source.element_size():
        padded = source.as_strided((n + 1, c), (c, 1))
        if not padded[n].any():
            return padded
    return torch.cat([source, source.new_zeros(1, c)])


def _gather_gemm(table: torch.Tensor, source: torch.Tensor, weight2d: torch.Tensor, bias: torch.Tensor | None = None,
                 elu_alpha: float | None = None) -> torch.Tensor:
    """out[n] = concat_k(source_pad[table[n, k]]) @ weight2d, block by block (source_pad: zero row appended).
    With ``bias`` and ``elu_alpha`` (inference only) the bias and the ELU are applied to each block while
    it is in cache, and the output is returned with a zero row behind it for the next layer's gather."""
    n, fused = table.shape[0], bias is not None or elu_alpha is not None
    padded = _padded(source)
    out = source.new_empty(n + 1 if fused else n, weight2d.shape[1])
    if fused:
        out[n] = 0
    for rows in row_blocks(n, ROWS_PER_BLOCK):
        gathered = _gather_rows(padded, table[rows])
        if bias is None:
            torch.mm(gathered, weight2d, out=out[rows])
        else:
            torch.addmm(bias, gathered, weight2d, out=out[rows])
        if elu_alpha is not None:
            torch.nn.functional.elu_(out[rows], elu_alpha)
    return out[:n]


class _SparseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feats, weight, kmap):
        k, c_in, c_out = weight.shape
        ctx.save_for_backward(feats, weight)
        ctx.kmap = kmap  # its reverse table is built in backward, when there is one
        return _gather_gemm(kmap.nbr, feats, weight.reshape(k * c_in, c_out))

    @staticmethod
    def backward(ctx, grad_out):
        feats, weight = ctx.saved_tensors
        rev = ctx.kmap.rev
        k, c_in, c_out = weight.shape
        grad_out = grad_out.contiguous()
        need_feats, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # One gather of grad_out through the reverse table serves both gradients:
        # grad_feats[i] = sum_k grad_out[rev[i, k]] @ W[k]^T and grad_W[k] = sum_i feats[i]^T grad_out[rev[i, k]]
        padded = torch.cat([grad_out, grad_out.new_zeros(1, c_out)])
        w_t = weight.transpose(1, 2).reshape(k * c_out, c_in)
        grad_feats = feats.new_empty(feats.shape) if need_feats else None
        grad_weight = feats.new_zeros(c_in, k * c_out) if need_weight else None
        for rows in row_blocks(rev.shape[0], ROWS_PER_BLOCK):
            g = _gather_rows(padded, rev[rows])  # (R, K * C_out)
            if need_feats:
                torch.mm(g, w_t, out=grad_feats[rows])
            if need_weight:
                grad_weight.addmm_(feats[rows].T, g)
        if need_weight:
            grad_weight = grad_weight.reshape(c_in, k, c_out).transpose(0, 1).contiguous()
        return grad_feats, grad_weight, None


def _expand_gemm(feats: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor | None = None,
                 elu_alpha: float | None = None) -> torch.Tensor:
    """out[rows[:, k]] = feats @ weight[k], offset by offset (the rows are disjoint across k). With ``bias`` and
    ``elu_alpha`` (inference only), as in _gather_gemm: each offset's block gets them while in cache, and the
    output keeps a zero row behind it for the next layer's gather."""
    n, fused = rows.numel(), bias is not None or elu_alpha is not None
    out = feats.new_empty(n + 1 if fused else n, weight.shape[2])
    if fused:
        out[n] = 0
    for k in range(weight.shape[0]):
        block = feats @ weight[k] if bias is None else torch.addmm(bias, feats, weight[k])
        if elu_alpha is not None:
            torch.nn.functional.elu_(block, elu_alpha)
        out.index_copy_(0, rows[:, k], block)
    return out[:n]


class _Expand2(torch.autograd.Function):
    """The kernel-2, stride-2 generative transposed convolution. Each input point makes eight outputs, one
    per offset, and each output reads that one input, so ``out[rows[:, k]] = feats @ W[k]``: eight plain
    GEMMs, with no neighbour gather and none of the seven absent rows per output a kernel map would carry."""

    @staticmethod
    def forward(ctx, feats, weight, rows):
        ctx.save_for_backward(feats, weight, rows)
        return _expand_gemm(feats, weight, rows)

    @staticmethod
    def backward(ctx, grad_out):
        feats, weight, rows = ctx.saved_tensors
        need_feats, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_feats = torch.zeros_like(feats) if need_feats else None
        grad_weight = torch.empty_like(weight) if need_weight else None
        for k in range(weight.shape[0]):
            g = grad_out.index_select(0, rows[:, k])
            if need_feats:
                grad_feats.addmm_(g, weight[k].T)
            if need_weight:
                torch.mm(feats.T, g, out=grad_weight[k])
        return grad_feats, grad_weight, None


def _check_weight(x: SparseTensor, weight: torch.Tensor, kernel_size: int) -> None:
    if weight.ndim != 3 or weight.shape[0] != kernel_size**3 or weight.shape[1] != x.feats.shape[1]:
        raise ValueError(
            f"weight must be (kernel_size^3={kernel_size**3}, C_in={x.feats.shape[1]}, C_out); got {tuple(weight.shape)}"
        )


def autocast_dtype(device_type: str) -> torch.dtype | None:
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError, RuntimeError):  # torch < 2.4, or a device type autocast does not know
        pass
    return None


def _apply(x: SparseTensor, weight, bias, op, index, out_set: CoordinateSet) -> SparseTensor:
    """``op`` (_SparseConv with a kernel map, or _Expand2 with its rows) on ``x``, then the bias."""
    low = autocast_dtype(x.feats.device.type)
    if low is not None:  # mixed precision: the GEMMs run in the autocast dtype, as conv3d would
        with torch.autocast(x.feats.device.type, enabled=False):
            feats = op.apply(x.feats.to(low), weight.to(low), index)
    else:
        feats = op.apply(x.feats, weight, index)
    if bias is not None:
        feats = feats + bias
    return SparseTensor(feats, out_set)


def _conv_map(x: SparseTensor, kernel_size: int, stride: int):
    if stride == 1:
        out_set = x.cset
    elif stride == 2:
        out_set = downsample_coords(x.cset, 2)
    else:
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    return out_set, cached_map(x.cset, out_set, kernel_size, x.stride, +1)


def conv(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None = None, kernel_size: int = 3, stride: int = 1) -> SparseTensor:
    """Sparse convolution. Stride 1: outputs on the input's coordinates (out[p] = sum_o W[o] x[p + o*s]).
    Stride 2: outputs on the coarser grid at stride 2s covering the input (out[q] = sum_o W[o] x[q + o*s])."""
    _check_weight(x, weight, kernel_size)
    if kernel_size == 1 and stride == 1:  # a pointwise layer (the classifiers): one GEMM, no kernel map
        feats = x.feats @ weight[0]
        return SparseTensor(feats if bias is None else feats + bias, x.cset)
    out_set, kmap = _conv_map(x, kernel_size, stride)
    return _apply(x, weight, bias, _SparseConv, kmap, out_set)


def conv_elu(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor, kernel_size: int = 3, stride: int = 1,
             alpha: float = 1.0) -> SparseTensor:
    """ELU(conv(x) + bias) for inference (no autograd): one pass over each block of rows instead of three
    over the whole level, which matters once a level's features outgrow the cache (a 512 grid). A batch
    norm in eval mode folds into ``weight`` and ``bias`` (see nn.SparseConvNormAct)."""
    _check_weight(x, weight, kernel_size)
    out_set, kmap = _conv_map(x, kernel_size, stride)
    k, c_in, c_out = weight.shape
    return SparseTensor(_gather_gemm(kmap.nbr, x.feats, weight.reshape(k * c_in, c_out), bias, alpha), out_set)


def generative_conv_transpose(
    x: SparseTensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    kernel_size: int = 2,
    stride: int = 2,
    max_points: int | None = None,
    level: str = "",
) -> SparseTensor:
    """Generative transposed convolution: creates every coordinate the kernel reaches at stride s/2
    (out[p + o*s/2] += W[o] x[p]), as MinkowskiEngine's MinkowskiGenerativeConvolutionTranspose."""
    _check_weight(x, weight, kernel_size)
    if stride != 2:
        raise ValueError(f"generative transposed convolution supports stride 2, got {stride}")
    if kernel_size == 2:
        check_point_cap(8 * len(x), len(x), max_points, level)
        out_set, rows = expand_pairs(x.cset)
        return _apply(x, weight, bias, _Expand2, rows, out_set)
    out_set = expand_coords(x.cset, kernel_size, 2)
    check_point_cap(len(out_set), len(x), max_points, level)
    kmap = cached_map(x.cset, out_set, kernel_size, out_set.stride, -1)
    return _apply(x, weight, bias, _SparseConv, kmap, out_set)


def generative_conv_transpose_elu(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor, alpha: float = 1.0,
                                  max_points: int | None = None, level: str = "") -> SparseTensor:
    """ELU(generative_conv_transpose(x) + bias) for inference, kernel 2: each offset's GEMM output gets its
    bias and ELU while in cache, and the result keeps a zero row behind it for the next gather."""
    _check_weight(x, weight, 2)
    check_point_cap(8 * len(x), len(x), max_points, level)
    out_set, rows = expand_pairs(x.cset)
    return SparseTensor(_expand_gemm(x.feats, weight, rows, bias, alpha), out_set)


def prune(x: SparseTensor, keep: torch.Tensor) -> SparseTensor:
    """Keep the points where ``keep`` is True (features and coordinates, order preserved)."""
    keep = keep.reshape(-1)
    if keep.dtype != torch.bool or keep.numel() != len(x):
        raise ValueError(f"keep must be a bool vector of {len(x)} entries; got {keep.dtype} of {keep.numel()}")
    return SparseTensor(x.feats[keep], x.cset.subset(keep))


def union(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """Points of either tensor; features are summed where both have the point."""
    if a.stride != b.stride:
        raise ValueError(f"union needs equal tensor strides; got {a.stride} and {b.stride}")
    if a.feats.shape[1] != b.feats.shape[1]:
        raise ValueError(f"union needs equal channel counts; got {a.feats.shape[1]} and {b.feats.shape[1]}")
    keys, feats = merge_rows(a.cset.keys, a.feats, b.cset.keys, b.feats)
    return SparseTensor(feats, CoordinateSet(keys, a.stride))


class _MergeRows(torch.autograd.Function):
    """Rows of ``a`` and ``b`` placed at ``rows_a`` and ``rows_b`` of an ``n``-row output, summed where both land.
    Each row set's positions are distinct, so the forward pass copies instead of scatter-adding over the concatenated
    rows, and the backward pass gathers each set's rows without a concatenation: on 800,000 rows of 32 channels,
    0.17 s forward against 0.29 s for ``index_add`` on our CPU (docs/training.md: a whole step)."""

    @staticmethod
    def forward(ctx, feats_a, feats_b, rows_a, rows_b, n: int):
        out = feats_a.new_zeros(n, feats_a.shape[1])
        out.index_copy_(0, rows_a, feats_a)
        out.index_copy_(0, rows_b, out.index_select(0, rows_b).add_(feats_b))
        ctx.save_for_backward(rows_a, rows_b)
        return out

    @staticmethod
    def backward(ctx, grad):
        rows_a, rows_b = ctx.saved_tensors
        return grad.index_select(0, rows_a), grad.index_select(0, rows_b), None, None, None


def merge_rows(keys_a: torch.Tensor, feats_a: torch.Tensor, keys_b: torch.Tensor, feats_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted unique packed keys of both row sets, and their features summed where a key is in both (the
    union's arithmetic, shared by every backend that lacks a union of its own). The keys of each set must be
    distinct, as a sparse tensor's are."""
    keys, inverse = torch.unique(torch.cat([keys_a, keys_b]), sorted=True, return_inverse=True)
    return keys, _MergeRows.apply(feats_a, feats_b, inverse[: len(keys_a)], inverse[len(keys_a) :], len(keys))


def target_mask(x: SparseTensor, target: CoordinateSet) -> torch.Tensor:
    """For each point of ``x``, whether it lies in ``target`` brought to x's stride (the training target
    of a generative level: coordinate floor(c / s) * s is occupied in the ground truth)."""
    level = coarsen_to(target, x.stride)
    return level.lookup(x.cset.keys) < len(level)
