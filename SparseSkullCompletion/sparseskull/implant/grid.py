"""Between the CT's grid and the model's: block-averaging onto the model's voxel spacing (as the training
copies were made), and the network's completed skull back onto the CT grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sparseskull.data.resample import block_fraction, upsample
from sparseskull.data.volume import Volume, bounding_box
from sparseskull.implant.options import InputError


def model_factors(volume: Volume, model_spacing) -> tuple[int, int, int]:
    """Integer block sizes per axis that bring ``volume``'s spacing closest to the model's."""
    return tuple(max(1, int(round(m / s))) for m, s in zip(model_spacing, volume.spacing_mm))


@dataclass
class ModelGrid:
    """The crop of the input grid that the coarse grid covers, and the block size per axis."""

    lo: np.ndarray  # first input voxel of the crop
    factors: tuple[int, int, int]
    shape: tuple[int, int, int]  # coarse grid shape (without the margin)
    margin: int  # coarse voxels of room around the skull for generated bone

    def fine_shape(self) -> tuple[int, int, int]:
        return tuple(int(s * f) for s, f in zip(self.shape, self.factors))


GRID_MARGIN = 4  # coarse voxels between the skull's corner and the model grid's: within the training shifts (0-8)


def field_of_view_mm(model_spacing, resolution: int) -> float:
    """The in-plane field of view the model was trained on."""
    return resolution * float(max(model_spacing[:2]))


def check_image_extent(header, model_spacing, resolution: int, max_extent: float) -> None:
    """Refuse, from the header alone, an image that spans more than twice what :func:`to_model_grid` lets a skull
    span: a whole-body scan, or a spacing in the wrong unit (a head CT with neck and table stays within it)."""
    fov = field_of_view_mm(model_spacing, resolution)
    extent = header.extent_mm[:3]
    if max(extent) > 2 * max_extent * fov:
        raise InputError(f"the image spans {[round(e) for e in extent]} mm, more than {round(2 * max_extent * fov)} mm "
                         f"(twice --max-extent {max_extent:g} times the model's {round(fov)} mm field of view): crop it to the head, "
                         "or fix the voxel spacing in the file (or raise --max-extent)")


def to_model_grid(skull: Volume, model_spacing, resolution: int, max_extent: float, margin: int = GRID_MARGIN) -> tuple[np.ndarray, ModelGrid]:
    """The skull block-averaged to the model's spacing (a coarse voxel is bone when at least half its
    block is, as the training copies were made), cropped to the skull with ``margin`` voxels of room."""
    factors = model_factors(skull, model_spacing)
    box = bounding_box(np.asarray(skull.array, bool))
    if box is None:
        raise InputError("the skull mask is empty: there is no skull to complete")
    lo, hi = np.array([b.start for b in box]), np.array([b.stop for b in box])
    shape = tuple(int(-(-(h - lo_) // f)) for lo_, h, f in zip(lo, hi, factors))
    limit = max_extent * resolution
    if max(shape) > limit:
        extent = [round(float(n * f * s)) for n, f, s in zip(shape, factors, skull.spacing_mm)]
        fov = round(field_of_view_mm(model_spacing, resolution))
        raise InputError(f"the skull spans {extent} mm, far more than the {fov} mm field of view the model was trained on: "
                         f"is this a head CT? (a whole-body scan, or a wrong voxel spacing in the file? --max-extent {max_extent:g} "
                         "is the limit, in fields of view)")
    crop = np.zeros(tuple(n * f for n, f in zip(shape, factors)), dtype=bool)
    src = skull.array[lo[0]:lo[0] + crop.shape[0], lo[1]:lo[1] + crop.shape[1], lo[2]:lo[2] + crop.shape[2]]
    crop[: src.shape[0], : src.shape[1], : src.shape[2]] = src
    coarse = block_fraction(crop, factors) >= 0.5
    coarse_mm3 = float(coarse.sum()) * float(np.prod([f * s for f, s in zip(factors, skull.spacing_mm)]))
    fine_mm3 = float(np.count_nonzero(skull.array)) * skull.voxel_volume_mm3
    if coarse_mm3 < 0.1 * fine_mm3:  # a skull keeps most of its volume at the model's spacing (bone is 5-10 mm thick)
        spacing = [round(float(f * s), 2) for f, s in zip(factors, skull.spacing_mm)]
        raise InputError(f"the skull all but vanishes on the model's {spacing} mm grid ({coarse_mm3 / 1000:.1f} of "
                         f"{fine_mm3 / 1000:.1f} cm^3 left): the bone is thinner than half a model voxel; is this a skull, "
                         "segmented as solid bone? (a surface outline or scattered voxels cannot be completed)")
    coarse = np.pad(coarse, margin)
    return coarse, ModelGrid(lo, factors, shape, margin)


def to_ct_grid(coarse_in: np.ndarray, coarse_out: np.ndarray, grid: ModelGrid, skull: Volume) -> np.ndarray:
    """The implant on the input grid: the coarse completed skull, interpolated linearly (>= 0.5), where
    the coarse implant or its 26 neighbours are, minus the defective skull."""
    coarse_implant = coarse_out & ~coarse_in
    full = np.zeros(skull.shape, dtype=bool)
    if not coarse_implant.any():
        return full
    near = ndimage.binary_dilation(coarse_implant, np.ones((3, 3, 3), bool))
    ijk = np.argwhere(near)  # work on the coarse implant's box only
    a = np.maximum(ijk.min(axis=0) - 1, 0)
    b = np.minimum(ijk.max(axis=0) + 2, coarse_in.shape)
    sub = ModelGrid(grid.lo, grid.factors, tuple(int(v) for v in b - a), 0)
    f = np.asarray(grid.factors)
    start = grid.lo + (a - grid.margin) * f  # input voxel of the sub-box's first fine voxel
    solid = upsample(coarse_out[a[0]:b[0], a[1]:b[1], a[2]:b[2]], sub.factors, sub.fine_shape(), order=1) >= 0.5
    region = upsample(near[a[0]:b[0], a[1]:b[1], a[2]:b[2]], sub.factors, sub.fine_shape(), order=0) >= 0.5
    implant = solid & region
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.array(implant.shape), skull.shape)
    if np.any(hi <= lo):
        return full
    s = tuple(slice(int(l_ - st), int(h - st)) for l_, h, st in zip(lo, hi, start))
    d = tuple(slice(int(l_), int(h)) for l_, h in zip(lo, hi))
    full[d] = implant[s] & ~np.asarray(skull.array[d], dtype=bool)
    return full

