"""Baselines that `sparseskull evaluate` reports beside the network.

Mirroring: the manual method Slicer users reach for today for a one-sided defect. The defective skull
is reflected about its mid-sagittal plane and the reflected bone that falls where the skull has none
is the implant (then cleaned like the network's). The plane is found by a small search: the L-R
position and the yaw and roll angles that make the reflected skull overlap the skull most, on a coarse
copy. No library does this for a binary skull, hence the few lines here.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sparseskull.resample import block_max
from sparseskull.volume import Volume


def _reflection(normal: np.ndarray, offset: float) -> np.ndarray:
    """4x4 LPS reflection about the plane n . x = offset."""
    n = normal / np.linalg.norm(normal)
    m = np.eye(4)
    m[:3, :3] = np.eye(3) - 2.0 * np.outer(n, n)
    m[:3, 3] = 2.0 * offset * n
    return m


def _normal(yaw_deg: float, roll_deg: float) -> np.ndarray:
    y, r = np.radians(yaw_deg), np.radians(roll_deg)
    return np.array([np.cos(y) * np.cos(r), np.sin(y), np.cos(y) * np.sin(r)])


def _reflect(array: np.ndarray, volume: Volume, reflection: np.ndarray, order: int = 0) -> np.ndarray:
    """``array`` on ``volume``'s grid, reflected in patient space (index -> LPS -> reflected -> index);
    interpolated linearly with ``order`` 1 (floats), nearest with 0 (bool)."""
    a = volume.ijk_to_lps
    m = np.linalg.inv(a) @ reflection @ a  # output index -> input index (a reflection is its own inverse)
    out = ndimage.affine_transform(array.astype(np.float32), m[:3, :3], offset=m[:3, 3], order=order, mode="constant")
    return out if order else out >= 0.5


def midsagittal_plane(skull: Volume, voxel_mm: float = 4.0, shifts_mm: float = 12.0, angles_deg: float = 8.0) -> tuple[np.ndarray, float]:
    """The plane (unit normal in LPS, offset mm) about which the skull is most symmetric, searched on a
    copy with about ``voxel_mm`` voxels; among equal overlaps the least tilted plane wins."""
    factor = max(1, int(round(voxel_mm / min(skull.spacing_mm))))
    coarse = block_max(np.asarray(skull.array, bool), factor)
    grid = Volume(coarse, tuple(s * factor for s in skull.spacing_mm), tuple(skull.index_to_lps(np.full((1, 3), (factor - 1) / 2))[0]), skull.direction)
    centre = skull.centroid_lps()
    values = coarse.astype(np.float32)

    def overlap(n, offset) -> float:  # linear interpolation: smooth in the offset, below a voxel too
        return float((_reflect(values, grid, _reflection(n, offset), order=1) * values).sum())

    best = (-1.0, 0.0, 0.0, float(centre[0]))  # (score, yaw, roll, offset)

    def search(yaws, rolls, offsets_of):
        nonlocal best
        for yaw, roll in sorted(((y, r) for y in yaws for r in rolls), key=lambda a: abs(a[0]) + abs(a[1])):
            n = _normal(yaw, roll)
            for offset in offsets_of(n):
                score = overlap(n, offset)
                if score > best[0]:
                    best = (score, yaw, roll, offset)

    coarse_angles = np.arange(-angles_deg, angles_deg + 1e-6, 3.0)
    search(coarse_angles, coarse_angles, lambda n: sorted(n @ centre + np.arange(-shifts_mm, shifts_mm + 1e-6, 2.0), key=lambda o: abs(o - n @ centre)))
    _, yaw0, roll0, offset0 = best
    fine = np.arange(-2.0, 2.0 + 1e-6, 1.0)
    search(yaw0 + fine, roll0 + fine, lambda n: [offset0 + d for d in (-1.0, 0.0, 1.0)])
    _, yaw0, roll0, offset0 = best
    search([yaw0], [roll0], lambda n: [offset0 + d for d in np.arange(-1.0, 1.0 + 1e-6, 0.25)])
    best = (best[0], _normal(best[1], best[2]), best[3])
    return best[1], best[2]


def mirror_completion(defective: Volume) -> tuple[np.ndarray, dict]:
    """The skull united with the part of its reflection (about the mid-sagittal plane) that falls where it
    has no bone, opened by one voxel: a reflection is never exact, and the slivers it leaves along every
    surface are thinner than a plate of skull."""
    skull = np.asarray(defective.array, bool)
    normal, offset = midsagittal_plane(defective)
    mirrored = _reflect(skull, defective, _reflection(normal, offset))
    added = ndimage.binary_opening(mirrored & ~skull, ndimage.generate_binary_structure(3, 1))
    return skull | added, {"plane_normal_lps": [round(float(v), 4) for v in normal], "plane_offset_mm": round(float(offset), 2)}
