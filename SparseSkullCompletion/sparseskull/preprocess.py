"""From a head CT to a skull mask: threshold the bone, keep the skull, drop the table and specks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sparseskull.volume import Volume

DEFAULT_THRESHOLD_HU = 300.0
"""Between soft tissue (< 100 HU) and the diploe of the vault (about 700 HU and up)."""


class NoBoneError(ValueError):
    """The CT has nothing above the bone threshold."""


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary array (empty in, empty out)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def skull_mask_from_ct(ct: Volume, threshold_hu: float = DEFAULT_THRESHOLD_HU, keep_largest: bool = True) -> Volume:
    """Bone above ``threshold_hu``; with ``keep_largest``, only the largest connected piece (the skull)."""
    bone = np.asarray(ct.array) >= threshold_hu
    if not bone.any():
        hi = float(np.max(ct.array))
        raise NoBoneError(
            f"no voxel reaches the bone threshold of {threshold_hu:g} HU (the CT's maximum is {hi:g}); "
            "is this a CT in Hounsfield units, or is the threshold too high?"
        )
    if keep_largest:
        bone = largest_component(bone)
    return ct.with_array(bone)
