"""The dense counterpart of Table 1 (the paper's baseline): the same layers as dense conv3d, Dice loss.

Layer for layer it mirrors :class:`~sparseskull.nets.sparse_net.SparseCompletionNet` (same kernels, channels,
batch norms and classifiers, hence the same parameter count), but convolves the whole grid and
prunes nothing: the last classifier's sigmoid is the prediction. The kernel-4 transposed convolution
writes out[2v + o] for o in 0..3, as the sparse one does, and is cropped back to twice its input size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sparseskull.nets.sparse_net import TOTAL_STRIDE, parse_channels


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm3d(channels), nn.ELU())


class DenseCompletionNet(nn.Module):
    def __init__(self, channels="ch1"):
        super().__init__()
        self.channels = c = parse_channels(channels)
        enc = [_block(nn.Conv3d(1, c[0], 3, padding=1, bias=False), c[0])]
        for i in range(1, 7):
            enc.append(
                nn.Sequential(
                    _block(nn.Conv3d(c[i - 1], c[i], 2, stride=2, bias=False), c[i]),
                    _block(nn.Conv3d(c[i], c[i], 3, padding=1, bias=False), c[i]),
                )
            )
        self.encoder = nn.ModuleList(enc)
        self.up, self.refine, self.classify = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(6, 0, -1):
            kernel = 4 if i == 6 else 2
            self.up.append(_block(nn.ConvTranspose3d(c[i], c[i - 1], kernel, stride=2, bias=False), c[i - 1]))
            self.refine.append(_block(nn.Conv3d(c[i - 1], c[i - 1], 3, padding=1, bias=False), c[i - 1]))
            self.classify.append(nn.Conv3d(c[i - 1], 1, 1, bias=True))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 1, X, Y, Z) occupancy, each size a multiple of 64 -> logits of every decoder level (last: full size)."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"input must be (B, 1, X, Y, Z); got {tuple(x.shape)}")
        if any(n % TOTAL_STRIDE for n in x.shape[2:]):
            raise ValueError(f"grid sizes must be multiples of {TOTAL_STRIDE} (the network's total stride); got {tuple(x.shape[2:])}")
        for block in self.encoder:
            x = block(x)
        logits = []
        for up, refine, classify in zip(self.up, self.refine, self.classify):
            target = [2 * n for n in x.shape[2:]]
            x = up(x)[..., : target[0], : target[1], : target[2]]
            x = refine(x)
            logits.append(classify(x))
        return logits

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss of sigmoid(logits) against a binary target (the paper's loss for the dense network)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.to(p.dtype).flatten(1)
    dice = (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return 1.0 - dice.mean()


def grid_shape(extents) -> tuple[int, int, int]:
    """The smallest grid, each size a multiple of the network's total stride, that holds ``extents``."""
    return tuple(int(-(-max(int(n), 1) // TOTAL_STRIDE) * TOTAL_STRIDE) for n in extents)


def densify(coords: list[np.ndarray], shape) -> torch.Tensor:
    """(B, 1, X, Y, Z) float occupancy of each item's voxel coordinates."""
    out = torch.zeros((len(coords), 1, *shape))
    for b, c in enumerate(coords):
        if len(c):
            out[b, 0, c[:, 0], c[:, 1], c[:, 2]] = 1.0
    return out


def complete_dense(model: DenseCompletionNet, coarse: np.ndarray, threshold: float = 0.5, device="cpu") -> np.ndarray:
    """Complete a coarse skull mask with the dense network: the input plus the voxels it predicts."""
    shape = grid_shape(coarse.shape)
    x = torch.zeros((1, 1, *shape), device=device)
    x[0, 0, : coarse.shape[0], : coarse.shape[1], : coarse.shape[2]] = torch.from_numpy(coarse.astype(np.float32)).to(device)
    with torch.inference_mode():
        prob = torch.sigmoid(model(x)[-1])[0, 0, : coarse.shape[0], : coarse.shape[1], : coarse.shape[2]].cpu().numpy()
    return coarse | (prob > threshold)
