"""Signed-distance shapes (mm, negative inside) and a narrow-band rasteriser onto a voxel grid.

Written by hand because no maintained library rasterises an arbitrary implicit shape onto an
oblique, anisotropic 512 x 512 x Z grid in a few seconds: the shape is evaluated on a coarse grid
first, and only the coarse cells near its surface are evaluated at full resolution.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sparseskull.data.volume import Volume

SDF = Callable[[np.ndarray], np.ndarray]
"""Maps points (N x 3, mm) to a signed distance-like value (N,), negative inside, |gradient| <= LIPSCHITZ."""

LIPSCHITZ = 2.0
"""Bound on the slope of the shapes used here; sets the width of the band evaluated finely."""


def ellipsoid(q: np.ndarray, centre, axes) -> np.ndarray:
    """Lower bound of the distance to an axis-aligned ellipsoid (exact on a sphere)."""
    (cx, cy, cz), (ax, ay, az) = [float(c) for c in centre], [float(a) for a in axes]
    rho = np.sqrt(((q[:, 0] - cx) / ax) ** 2 + ((q[:, 1] - cy) / ay) ** 2 + ((q[:, 2] - cz) / az) ** 2)
    return (rho - 1.0) * min(ax, ay, az)


def capsule(q: np.ndarray, a, b, radius: float) -> np.ndarray:
    """Exact distance to a segment a-b thickened by ``radius``."""
    a = np.asarray(a, dtype=np.float32)
    ab = np.asarray(b, dtype=np.float32) - a
    t = np.clip(((q - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(q - a - t[:, None] * ab, axis=1) - radius


def union(*values: np.ndarray) -> np.ndarray:
    return np.minimum.reduce(values)


def intersect(*values: np.ndarray) -> np.ndarray:
    return np.maximum.reduce(values)


def subtract(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(a, -b)


def grid_points(volume: Volume, ijk: np.ndarray) -> np.ndarray:
    """LPS millimetres (float32, N x 3) of (fractional) voxel indices."""
    affine = volume.ijk_to_lps
    return (ijk.astype(np.float64) @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)


def rasterize(sdf: SDF, grid: Volume, factor: int = 4, chunk: int = 1 << 21) -> np.ndarray:
    """Voxels of ``grid`` (its geometry; its array gives only the shape) where ``sdf`` < 0.

    Coarse cells of ``factor``^3 voxels whose centre lies farther from the surface than the cell's
    half-diagonal (times the slope bound) take the coarse sign; the others are evaluated per voxel.
    """
    shape = np.array(grid.shape)
    coarse_shape = -(-shape // factor)
    cidx = np.indices(coarse_shape).reshape(3, -1).T
    centres = cidx * factor + (factor - 1) / 2.0
    coarse = np.concatenate([sdf(grid_points(grid, centres[s : s + chunk])) for s in range(0, len(centres), chunk)])
    half_diag = 0.5 * factor * float(np.linalg.norm(grid.spacing_mm))
    band = np.abs(coarse) <= LIPSCHITZ * half_diag + 0.5

    fine = np.repeat(np.repeat(np.repeat((coarse < 0).reshape(coarse_shape), factor, 0), factor, 1), factor, 2)
    fine = np.ascontiguousarray(fine[: shape[0], : shape[1], : shape[2]])

    offsets = np.indices((factor,) * 3).reshape(3, -1).T
    band_cells = cidx[band]
    per_chunk = max(1, chunk // len(offsets))
    for s in range(0, len(band_cells), per_chunk):
        ijk = (band_cells[s : s + per_chunk, None, :] * factor + offsets[None]).reshape(-1, 3)
        ijk = ijk[(ijk < shape).all(axis=1)]
        fine[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = sdf(grid_points(grid, ijk)) < 0
    return fine
