"""Sparse layers as torch modules. They run on whichever backend their input tensor belongs to.

Weights are stored in one canonical layout, (kernel_size^3, C_in, C_out) with offsets in dense
``conv3d`` order, so a state dict trained on one backend loads and runs on another.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparseskull.sparse.backends import ops_for
from sparseskull.sparse.functional import autocast_dtype, conv_elu
from sparseskull.sparse.tensor import SparseTensor


class _KernelLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool, fan_in_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.weight = nn.Parameter(torch.empty(kernel_size**3, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        bound = 1.0 / math.sqrt(fan_in_channels * kernel_size**3)  # as MinkowskiEngine initialises
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, bias={self.bias is not None}"


class SparseConv3d(_KernelLayer):
    """Convolution; stride 1 keeps the coordinates, stride 2 moves to the coarser grid."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, in_channels)

    def forward(self, x):
        return ops_for(x).conv(x, self.weight, self.bias, self.kernel_size, self.stride)


class SparseGenerativeConvTranspose3d(_KernelLayer):
    """Generative transposed convolution (stride 2): creates every coordinate its kernel reaches."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, stride: int = 2, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, out_channels)

    def forward(self, x, max_points: int | None = None, level: str = ""):
        return ops_for(x).generative_conv_transpose(x, self.weight, self.bias, self.kernel_size, self.stride, max_points, level)


class SparseBatchNorm(nn.BatchNorm1d):
    """Batch normalisation of the features. With a single point in training mode (possible at the
    deepest level of a small skull) batch statistics are undefined: the running statistics are used.

    The running variance follows the batch's biased variance, the one training normalises with, where
    ``nn.BatchNorm1d`` follows the unbiased one (n / (n - 1) times larger). The deepest levels of a small
    batch hold a handful of points (4 for one skull at 64): there the unbiased estimate made an eval-mode
    network normalise differently from the training that fitted it (the 64 overfitting test's exported network:
    implant DSC 0.63 on the skull it had fitted; 1.0 with the biased variance, the same training losses)."""

    def forward(self, x):
        ops = ops_for(x)
        feats = ops.features(x)
        if not self.training:
            feats = super().forward(feats)
        elif feats.shape[0] <= 1:
            feats = nn.functional.batch_norm(feats, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        else:  # batch statistics; their biased variance comes back as 1 / sqrt(var + eps), so no second pass reads the features
            feats, mean, invstd = torch.native_batch_norm(feats, self.weight, self.bias, None, None, True, 0.0, self.eps)
            if self.track_running_stats:
                self._track(mean.detach(), (invstd.detach().double().pow(-2) - self.eps).clamp_min(0.0))
        return ops.with_features(x, feats)

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Move the running mean and (biased) variance towards this batch's, as ``nn.BatchNorm1d`` moves them."""
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(var.to(self.running_var.dtype), momentum)


class SparseActivation(nn.Module):
    """An elementwise activation on the features (ReLU, ELU, ...)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        ops = ops_for(x)
        return ops.with_features(x, self.fn(ops.features(x)))


class SparseConvNormAct(nn.Sequential):
    """Convolution, batch norm and activation, as ``nn.Sequential(conv, norm, act)`` (same state dict).
    In inference on the torch engine, with an ELU, the three run as one pass per block of rows: the
    norm's running statistics fold into the convolution's weight and bias, and the ELU is applied in
    place. Training, other activations and other engines run the three layers one after the other."""

    def __init__(self, conv: SparseConv3d, norm: SparseBatchNorm, act: SparseActivation):
        super().__init__(conv, norm, act)

    def forward(self, x):
        conv, norm, act = self
        if not (isinstance(conv, SparseConv3d) and fusable(x, norm, act)):
            return super().forward(x)
        weight, bias = fold_norm(conv, norm)
        return conv_elu(x, weight, bias, conv.kernel_size, conv.stride, act.fn.alpha)


def fusable(x, norm: SparseBatchNorm, act: SparseActivation) -> bool:
    """Whether a convolution, ``norm`` and ``act`` on ``x`` may run as one fused inference pass."""
    return (
        isinstance(x, SparseTensor) and isinstance(act.fn, nn.ELU) and not norm.training and norm.track_running_stats
        and not torch.is_grad_enabled() and autocast_dtype(x.feats.device.type) is None
    )


def fold_norm(conv: _KernelLayer, norm: SparseBatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's (K, C_in, C_out) weight and C_out bias with the eval-mode batch norm after it folded in."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
    bias = -norm.running_mean * scale + (norm.bias if norm.affine else 0.0)
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale, bias


def prune(x, keep: torch.Tensor):
    return ops_for(x).prune(x, keep)


def union(a, b):
    return ops_for(a).union(a, b)


def target_mask(x, target):
    return ops_for(x).target_mask(x, target)


def features(x) -> torch.Tensor:
    return ops_for(x).features(x)


def point_count(x) -> int:
    return ops_for(x).point_count(x)


def release_maps(x) -> None:
    """Drop the kernel maps cached on ``x``'s coordinates (torch engine; MinkowskiEngine and spconv keep
    their own). A backward pass still has the maps it saved."""
    cset = getattr(x, "cset", None)
    if cset is not None:
        cset.maps.clear()
