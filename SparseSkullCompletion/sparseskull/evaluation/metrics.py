"""Overlap metrics for skull and implant masks (pure functions, explicit rules for empty masks)."""

from __future__ import annotations

import numpy as np

from sparseskull.data.volume import bounding_box


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    return a, b


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """DSC = 2|A and B| / (|A| + |B|); 0.0 when both are empty, as the AutoImplant organisers define it."""
    a, b = _pair(a, b)
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 0.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def reconstruction_error(a: np.ndarray, b: np.ndarray) -> float:
    """RE: the percentage of voxels of the grid on which the two masks disagree."""
    a, b = _pair(a, b)
    return 100.0 * int(np.count_nonzero(a ^ b)) / a.size


# ---------------------------------------------------------------------------- the AutoImplant implant metrics

BOUNDARY_MM = 10.0
"""bDSC counts the voxels within this distance of the defective skull (the AutoImplant organisers' 10 mm)."""


def _spacing(spacing) -> np.ndarray:
    s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if s.shape != (3,) or np.any(s <= 0):
        raise ValueError(f"spacing must be three positive millimetre values; got {spacing}")
    return s


def boundary_dice(pred: np.ndarray, truth: np.ndarray, defective: np.ndarray, spacing, margin_mm: float = BOUNDARY_MM) -> float:
    """bDSC: the DSC of two implants restricted to the voxels within ``margin_mm`` of the defective skull
    (Euclidean distance with the voxel spacing, as the AutoImplant organisers define it); 0.0 when both
    implants are empty there. Distances are computed in the implants' bounding box grown by the margin,
    which holds every defective voxel that can be that close, so the crop changes nothing but time."""
    from scipy import ndimage

    pred, truth = _pair(pred, truth)
    defective = np.asarray(defective, dtype=bool)
    if defective.shape != pred.shape:
        raise ValueError(f"the defective skull's grid {defective.shape} differs from the implants' {pred.shape}")
    s = _spacing(spacing)
    box = bounding_box(pred | truth, np.ceil(margin_mm / s).astype(int) + 1)
    if box is None:
        return 0.0
    near = ndimage.distance_transform_edt(~defective[box], sampling=s) <= margin_mm
    return dice(pred[box] & near, truth[box] & near)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a 6-neighbour outside it (the mask minus its erosion; outside the grid is outside)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to ``b``'s surface, and from ``b``'s to ``a``'s."""
    from scipy import ndimage

    a, b = _pair(a, b)
    if not a.any() or not b.any():
        raise ValueError("surface distances are undefined when a mask is empty")
    s = _spacing(spacing)
    box = bounding_box(a | b, 1)  # the nearest surface voxel of either mask lies inside both masks' bounding box
    sa, sb = _surface(a[box]), _surface(b[box])
    to_b = ndimage.distance_transform_edt(~sb, sampling=s)
    to_a = ndimage.distance_transform_edt(~sa, sampling=s)
    return to_b[sa], to_a[sb]


def hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """HD95 in mm: the 95th percentile of the surface distances of both directions pooled (as the
    AutoImplant organisers and medpy compute it). NaN when either mask is empty: it is undefined."""
    a, b = _pair(a, b)
    if not a.any() or not b.any():
        return float("nan")
    ab, ba = surface_distances(a, b, spacing)
    return float(np.percentile(np.concatenate([ab, ba]), 95))


def hausdorff(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """The Hausdorff distance in mm (the largest surface distance); NaN when either mask is empty."""
    a, b = _pair(a, b)
    if not a.any() or not b.any():
        return float("nan")
    ab, ba = surface_distances(a, b, spacing)
    return float(max(ab.max(), ba.max()))


def implant_metrics(pred: np.ndarray, truth: np.ndarray, defective: np.ndarray, spacing) -> dict:
    """The AutoImplant challenge's three numbers for one implant: DSC, bDSC and HD95 (mm)."""
    return {"dsc": dice(pred, truth), "bdsc": boundary_dice(pred, truth, defective, spacing), "hd95_mm": hd95(pred, truth, spacing)}
