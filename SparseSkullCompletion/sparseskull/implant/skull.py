"""From a head CT to a skull mask: threshold the bone, keep the skull, drop the table and specks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sparseskull.data.volume import Volume, bounding_box
from sparseskull.implant.options import DEFAULT_THRESHOLD_HU


class NoBoneError(ValueError):
    """The CT has nothing above the bone threshold."""


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary array (empty in, empty out). Labelled on the box around the
    mask's voxels only (a CT's air around the head is most of its grid: 0.88 -> 0.56 s on a 512 x 512 x 249 skull)."""
    mask = np.asarray(mask, dtype=bool)
    box = bounding_box(mask)
    out = np.zeros(mask.shape, dtype=bool)
    if box is None:
        return out
    labels, count = ndimage.label(mask[box], structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        out[box] = labels > 0
        return out
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out[box] = labels == int(sizes.argmax())
    return out


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


def drop_mandible(skull: Volume, bridge_mm: float = 3.0, min_cm3: float = 5.0) -> tuple[Volume, int]:
    """The skull without a mandible that touches it (at the jaw joints, or teeth in occlusion), and the voxels dropped.

    Contacts thinner than ``bridge_mm`` are cut by eroding the bone that much (a distance transform in mm, so
    anisotropic grids are eroded evenly); the cranium is the largest piece that remains, and the mandible is the
    largest other piece if it holds at least ``min_cm3`` and its centre lies below the cranium's (a head-up pose,
    as CTs are taken). Each bone voxel then goes with the nearer of the two eroded pieces, so the mandible leaves
    whole, surface included, while thin bone of the cranium that the erosion removed (orbital walls, the
    temporal squama) stays with it. A skull without such a piece comes back unchanged."""
    bone = np.asarray(skull.array, bool)
    spacing = np.asarray(skull.spacing_mm, float)
    core = ndimage.distance_transform_edt(bone, sampling=spacing) > bridge_mm / 2
    labels, count = ndimage.label(core, structure=np.ones((3, 3, 3), bool))
    if count < 2:
        return skull, 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    cranium, other = int(order[0]), int(order[1])
    if sizes[other] * skull.voxel_volume_mm3 < min_cm3 * 1000:
        return skull, 0
    up = skull.direction.T @ np.array([0.0, 0.0, 1.0])  # the superior direction in index space (LPS z is S)
    centres = ndimage.center_of_mass(core, labels, [cranium, other])
    if float(np.dot(np.multiply(centres[1], spacing) - np.multiply(centres[0], spacing), up)) >= 0:
        return skull, 0  # not below the cranium: not a mandible
    box = ndimage.find_objects((labels == other).astype(np.uint8))[0]
    margin = np.ceil(2 * bridge_mm / spacing).astype(int) + 1
    box = tuple(slice(max(sl.start - int(m), 0), min(sl.stop + int(m), n)) for sl, m, n in zip(box, margin, bone.shape))
    part = labels[box]
    to_mandible = ndimage.distance_transform_edt(part != other, sampling=spacing)
    to_cranium = ndimage.distance_transform_edt(part != cranium, sampling=spacing) if (part == cranium).any() else np.inf
    dropped = bone[box] & (to_mandible < to_cranium) & (to_mandible <= 2 * bridge_mm)  # within the box's margin
    out = bone.copy()
    out[box] &= ~dropped
    out = largest_component(out)  # thin tips of the mandible, cut off from it by the above
    return skull.with_array(out), int(bone.sum() - out.sum())


def auto_threshold(ct: Volume) -> float:
    """Otsu's threshold between soft tissue and bone, over voxels from -100 HU up (air and fat left
    out), kept within 150..700 HU."""
    from skimage.filters import threshold_otsu

    values = np.asarray(ct.array[::2, ::2, ::2], dtype=np.float32)
    values = values[values >= -100]
    if values.size < 100 or values.max() <= values.min():
        return DEFAULT_THRESHOLD_HU
    return float(np.clip(threshold_otsu(values), 150.0, 700.0))
