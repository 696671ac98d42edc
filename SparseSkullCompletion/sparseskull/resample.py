"""Grid changes that keep patient geometry: the paper's multi-resolution copies of a mask."""

from __future__ import annotations

import numpy as np

from sparseskull.volume import Volume

PAPER_RESOLUTIONS = (64, 128, 256, 512)
"""In-plane sizes of the paper's copies: 64^2 x Z/8, 128^2 x Z/4, 256^2 x Z/2, 512^2 x Z."""


def block_grid(volume: Volume, factor: int) -> tuple[tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    """Shape, spacing and origin of the grid whose voxels are ``factor``^3 blocks of ``volume``'s.

    The last block along an axis whose size is not a multiple of ``factor`` is padded with zeros.
    A coarse voxel's centre is the centre of its block, so the copy overlays the original exactly.
    """
    shape = tuple(-(-n // factor) for n in volume.shape)
    spacing = tuple(s * factor for s in volume.spacing_mm)
    origin = tuple(volume.index_to_lps(np.full((1, 3), (factor - 1) / 2.0))[0])
    return shape, spacing, origin


def downsample_mask(mask: Volume, factor: int, threshold: float = 0.5) -> Volume:
    """A coarse copy of a binary mask: a block is foreground when at least ``threshold`` of it is.

    Block averaging keeps nesting: if A is inside B, downsample(A) is inside downsample(B), so
    implant = complete AND NOT defective stays exact at every resolution.
    """
    if factor < 1:
        raise ValueError(f"downsampling factor must be >= 1, got {factor}")
    if factor == 1:
        return mask.with_array(np.asarray(mask.array, dtype=bool))
    shape, spacing, origin = block_grid(mask, factor)
    a = np.asarray(mask.array, dtype=bool)
    a = np.pad(a, [(0, s * factor - n) for s, n in zip(shape, a.shape)])
    counts = a.reshape(shape[0], factor, shape[1], factor, shape[2], factor).sum(axis=(1, 3, 5), dtype=np.int32)
    return Volume(counts >= threshold * factor**3, spacing, origin, mask.direction)


def downsample_to(mask: Volume, size: int) -> Volume:
    """The paper's copy at in-plane ``size`` (e.g. 128 for 128^2 x Z/4 from a 512^2 x Z mask)."""
    if mask.shape[0] % size or mask.shape[1] % size or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"a {mask.shape} grid cannot be downsampled to {size}^2: the in-plane size must be a multiple of it")
    return downsample_mask(mask, mask.shape[0] // size)
