"""Geometric augmentation of nested masks (a skull and the parts of it): flips, small rotations, shifts.

The same nearest-neighbour resampling is applied to every mask of a pair, so each output voxel
takes the value of one input voxel in all of them: a mask inside another stays inside it, and
implant = complete AND NOT defective stays exact after augmentation.

Masks come out as voxel coordinates (N, 3), not grids: the network is sparse, so a rotated skull
may reach past the original grid without being clipped, and a shift is a change of coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Augmentation:
    """What to draw per training pair. ``flip_axes``: array axes that may be mirrored (each with
    probability 1/2; axis 0 is left-right in CT volumes); ``rotate_deg``: maximum rotation about each
    axis; ``shift``: the skull's corner is placed at a random voxel in [0, shift] per axis, so it meets the
    network's stride-64 grid at every alignment (coordinates move, no grid clips them)."""

    flip_axes: tuple[int, ...] = (0,)
    rotate_deg: float = 5.0
    shift: int = 8

    @classmethod
    def none(cls) -> "Augmentation":
        return cls((), 0.0, 0)


def _rotation(angles_rad) -> np.ndarray:
    a, b, c = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def augment(masks: list[np.ndarray], rng: np.random.Generator, aug: Augmentation, spacing=(1.0, 1.0, 1.0)) -> list[np.ndarray]:
    """Apply one random flip/rotation/shift to every mask; returns each mask's voxel coordinates (N, 3),
    placed so that their common bounding box starts at the drawn shift (non-negative coordinates).

    ``spacing`` (mm per voxel) makes the rotation rigid in patient space on anisotropic grids.
    """
    masks = [np.asarray(m, dtype=bool) for m in masks]
    if any(m.shape != masks[0].shape for m in masks):
        raise ValueError(f"masks to augment together must share a grid; got {[m.shape for m in masks]}")
    ijk = np.argwhere(np.logical_or.reduce(masks))
    if len(ijk) == 0:
        raise ValueError("cannot augment an empty mask")
    flips = [ax for ax in aug.flip_axes if rng.random() < 0.5]
    angles = np.deg2rad(rng.uniform(-aug.rotate_deg, aug.rotate_deg, 3)) if aug.rotate_deg > 0 else np.zeros(3)
    shift = rng.integers(0, aug.shift + 1, 3) if aug.shift > 0 else np.zeros(3, dtype=np.int64)

    lo, hi = ijk.min(axis=0), ijk.max(axis=0) + 1
    # the masks as the bits of one grid: one resampling for all of them (the rotation is most of a 256 training box's
    # draw), and nearest-neighbour resampling copies a voxel's bits together, so the masks come out as they would alone
    if len(masks) > 8:
        raise ValueError(f"at most 8 masks are augmented together; got {len(masks)}")
    packed = np.zeros(tuple(hi - lo), np.uint8)
    for bit, m in enumerate(masks):
        packed |= m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].view(np.uint8) << bit
    for ax in flips:  # mirror within the bounding box: the skull stays where it was
        packed = np.flip(packed, axis=ax)
    if np.any(angles != 0):
        packed = np.pad(packed, 1)  # samples a hair outside the last voxel still find it
        s = np.asarray(spacing, dtype=np.float64)
        r = _rotation(angles)
        m = np.diag(1 / s) @ r.T @ np.diag(s)  # output index -> input index, rotation in mm
        size = np.array(packed.shape, dtype=np.float64)
        centre = (size - 1) / 2
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in size], indexing="ij")).reshape(3, -1).T - centre
        reach = np.abs(np.linalg.inv(m) @ corners.T).max(axis=1)  # half-extent of the rotated box
        grow = np.maximum(0, np.ceil(reach - centre - 1e-9)).astype(int)  # same parity: centres on voxels
        out_shape = tuple(int(n) + 2 * int(g) for n, g in zip(size, grow))
        out_centre = (np.array(out_shape) - 1) / 2
        offset = centre - m @ out_centre
        packed = ndimage.affine_transform(packed, m, offset=offset, output_shape=out_shape, order=0, mode="constant")
    ijk = np.argwhere(packed)
    bits = packed[tuple(ijk.T)]
    coords = [ijk[(bits >> bit) & 1 == 1] for bit in range(len(masks))]
    corner = ijk.min(axis=0)  # the rotated box's own corner
    return [c - corner + shift for c in coords]
