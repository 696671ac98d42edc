"""Cleaning the network's implant on the CT grid: what never reaches into the defect, what lies behind intact
bone, specks and parts away from the defect go; the plate can be spanned over its opening and thickened
inwards. Distances are taken on coarse grids around the implant: a full-resolution skull's take seconds."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sparseskull.data.anatomy import braincase_centre, line_hits, outward_directions
from sparseskull.data.resample import block_max
from sparseskull.data.volume import Volume, bounding_box
from sparseskull.implant.span import span_defect


def _near_seeds(implant: np.ndarray, box, part: np.ndarray, seeds: np.ndarray, factors, coarse_spacing, within_mm: float) -> np.ndarray:
    """The implant's voxels within ``within_mm`` (plus a coarse voxel's diagonal) of ``seeds``, a mask on the coarse
    grid of ``factors`` blocks over ``box`` (``part``: the implant's blocks there, which hold every seed); empty when
    there is no seed. Distances are taken over the implant's blocks alone, and each implant voxel takes its block's."""
    out = np.zeros_like(implant)
    if not seeds.any():
        return out
    crop = bounding_box(part)
    near = ndimage.distance_transform_edt(~seeds[crop], sampling=coarse_spacing) <= within_mm + float(np.linalg.norm(coarse_spacing))
    voxels = np.nonzero(implant[box])
    keep = near[tuple(v // f - c.start for v, f, c in zip(voxels, factors, crop))]
    inside = np.zeros(tuple(sl.stop - sl.start for sl in box), bool)
    inside[tuple(v[keep] for v in voxels)] = True
    out[box] = inside
    return out


def _coarse_around(implant: np.ndarray, skull: Volume, margin_mm: float, voxel_mm: float):
    """The box around the implant widened by ``margin_mm``, and on a grid of about ``voxel_mm`` blocks over it: the
    block sizes, their spacing, and the implant and the bone max-pooled to it."""
    spacing = np.asarray(skull.spacing_mm, float)
    factors = np.maximum(1, np.floor(voxel_mm / spacing)).astype(int)
    box = bounding_box(implant, np.ceil(margin_mm / spacing) + 2 * factors)
    return box, factors, spacing * factors, block_max(implant[box], factors), block_max(np.asarray(skull.array[box], bool), factors)


def reach_filter(implant: np.ndarray, skull: Volume, min_depth_mm: float, rim_mm: float = 2.0, voxel_mm: float = 1.0) -> np.ndarray:
    """The implant less what never gets ``min_depth_mm`` away from the bone. A plate that fills a hole reaches
    deep into it, while the layers a network adds along intact bone stay within a few millimetres of it.
    The plate's rim, which meets the bone, is kept: every voxel within ``min_depth_mm + rim_mm`` of a deep one.
    When even the deepest voxel is shallower (a single small hole), half its depth is the bar instead; beside
    a large defect, the plate of a small hole is dropped (lower the bar for such skulls).
    Distances are taken on a grid of about ``voxel_mm`` voxels, around the implant only: distance
    transforms of a full-resolution skull take many seconds and the bar needs no finer."""
    if min_depth_mm <= 0 or not implant.any():
        return implant
    box, factors, coarse_spacing, part, bone = _coarse_around(implant, skull, min_depth_mm + rim_mm, voxel_mm)
    depth = ndimage.distance_transform_edt(~bone, sampling=coarse_spacing)
    depth[~part] = 0
    bar = min(min_depth_mm, 0.5 * float(depth.max()))
    return _near_seeds(implant, box, part, depth > bar, factors, coarse_spacing, bar + rim_mm)


def occlusion_filter(implant: np.ndarray, skull: Volume, reach_mm: float = 30.0, rim_mm: float = 3.0, voxel_mm: float = 1.0,
                     centre: np.ndarray | None = None) -> np.ndarray:
    """The implant less what lies behind intact bone, seen from the centre of the braincase: an implant voxel from
    which the line outwards meets the skull within ``reach_mm`` is inside the cranial cavity (a lining a network
    adds under intact bone), not in the defect, where the line leaves the head through the hole. Voxels within
    ``rim_mm`` of an unoccluded one stay, so the plate's edge under the bone's rim is kept. Computed on a grid of
    about ``voxel_mm`` voxels around the implant."""
    if reach_mm <= 0 or not implant.any():
        return implant
    box, factors, coarse_spacing, part, bone = _coarse_around(implant, skull, reach_mm, voxel_mm)
    ijk = np.argwhere(part)
    offset = np.array([sl.start for sl in box])
    grid = np.diag(np.append(factors, 1.0)).astype(float)  # coarse index -> full index of the block's first voxel, shifted to its centre
    grid[:3, 3] = offset + (factors - 1) / 2.0
    to_lps = skull.ijk_to_lps @ grid
    from_lps = np.linalg.inv(to_lps)
    lps = ijk @ to_lps[:3, :3].T + to_lps[:3, 3]
    step = 0.5 * float(coarse_spacing.min())
    occluded = line_hits(bone, lambda q: q @ from_lps[:3, :3].T + from_lps[:3, 3], lps, outward_directions(skull, lps, centre),
                      np.arange(step, reach_mm + 1e-9, step))
    seeds = np.zeros_like(part)
    seeds[tuple(ijk[~occluded].T)] = True
    return _near_seeds(implant, box, part, seeds, factors, coarse_spacing, rim_mm)


def clean_implant(implant: np.ndarray, skull: Volume, min_mm3: float, clearance_mm: float, keep_fraction: float = 0.2,
                  min_depth_mm: float = 0.0, drop_behind_bone: bool = False, span_opening: bool = False,
                  centre: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """What reaches ``min_depth_mm`` into the defect (:func:`reach_filter`), with ``drop_behind_bone`` not behind intact
    bone (:func:`occlusion_filter`); with ``span_opening``, the plate completed over the opening it lies in and what
    lies off that plate dropped (:func:`sparseskull.implant.span.span_defect`); clearance from the bone, then only the pieces
    that touch the bone (the defect's rim), hold at least ``min_mm3`` and at least ``keep_fraction`` of the largest such piece.
    ``centre``: the braincase centre both steps look out from (default: computed once here, when either runs)."""
    if centre is None and (drop_behind_bone or span_opening) and implant.any():
        centre = braincase_centre(skull)
    info = {"raw_voxels": int(implant.sum())}
    implant = reach_filter(implant, skull, min_depth_mm)
    info["shallow_voxels"] = info["raw_voxels"] - int(implant.sum())
    if drop_behind_bone:
        before = int(implant.sum())
        implant = occlusion_filter(implant, skull, centre=centre)
        info["behind_bone_voxels"] = before - int(implant.sum())
    if span_opening and implant.any():
        shell, off = span_defect(implant, skull, centre=centre)
        info["off_plate_voxels"] = int((implant & off).sum())
        info["spanned_voxels"] = int((shell & ~implant).sum())
        implant = (implant & ~off) | shell
    if not implant.any():
        return implant, {**info, "pieces_kept": 0, "pieces_dropped": 0, "voxels": 0}
    spacing = np.asarray(skull.spacing_mm)
    reach = np.ceil((clearance_mm + 1.5 * spacing.max()) / spacing).astype(int) + 1
    # from here on, only the box around the implant with room for the rim: labelling a whole CT grid takes 0.4 s
    outer = bounding_box(implant, reach)
    inner, skull_inner = implant[outer], skull.array[outer]
    labels, count = ndimage.label(inner, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels[inner], minlength=count + 1) * skull.voxel_volume_mm3
    candidates = np.flatnonzero(sizes >= min_mm3 * (1.0 if clearance_mm == 0 else 0.5))  # before the costly steps
    cleaned = np.zeros_like(implant)
    if len(candidates):
        boxes = ndimage.find_objects(labels)
        lo = np.min([[sl.start for sl in boxes[c - 1]] for c in candidates], axis=0) - reach
        hi = np.max([[sl.stop for sl in boxes[c - 1]] for c in candidates], axis=0) + reach
        box = tuple(slice(int(max(a, 0)), int(min(b, n))) for a, b, n in zip(lo, hi, inner.shape))
        part = np.isin(labels[box], candidates)
        bone = np.asarray(skull_inner[box], dtype=bool)
        if clearance_mm > 0:  # distances only where needed: a distance transform of the whole box takes seconds
            distance = ndimage.distance_transform_edt(~bone, sampling=spacing)
            part &= distance > clearance_mm
            rim = distance <= clearance_mm + 1.5 * spacing.max()  # about a voxel beyond the clearance
        else:
            rim = ndimage.binary_dilation(bone, np.ones((3, 3, 3), bool))  # next to the bone
        sub, n = ndimage.label(part, structure=np.ones((3, 3, 3), bool))
        sub_sizes = np.bincount(sub[part], minlength=n + 1) * skull.voxel_volume_mm3
        touches = np.zeros(n + 1, bool)
        touches[np.unique(sub[rim & part])] = True
        keep = (sub_sizes >= min_mm3) & touches
        keep[0] = False
        if keep.any():
            keep &= sub_sizes >= keep_fraction * sub_sizes[keep].max()
        cleaned[outer][box] = keep[sub]
        kept = int(keep.sum())
    else:
        kept = 0
    info.update(pieces_kept=kept, pieces_dropped=int(count - kept), voxels=int(cleaned.sum()))
    return cleaned, info


def ensure_thickness(implant: np.ndarray, skull: Volume, min_thickness_mm: float, clearance_mm: float = 0.0,
                     step_mm: float | None = None, centre: np.ndarray | None = None) -> np.ndarray:
    """The implant made at least ``min_thickness_mm`` thick, on its inner side: along each line from the centre of the
    braincase, a voxel is added when the implant lies further out on the line and ends within ``min_thickness_mm``
    of it. The outer surface (the head's contour) stays where it was; voxels in the bone, or closer to it than
    ``clearance_mm``, are never added. Lines are marched in ``step_mm`` steps (default: half the finest spacing).
    ``centre``: the braincase centre (default: computed from the skull)."""
    if min_thickness_mm <= 0 or not implant.any():
        return implant
    spacing = np.asarray(skull.spacing_mm, float)
    step = float(step_mm or 0.5 * spacing.min())
    box = bounding_box(implant, np.ceil(min_thickness_mm / spacing) + 1)
    part = implant[box]
    bone = np.asarray(skull.array[box], bool)
    free = ~bone & ~part
    if clearance_mm > 0:
        free &= ndimage.distance_transform_edt(~bone, sampling=spacing) > clearance_mm
    free &= ndimage.distance_transform_edt(~part, sampling=spacing) <= min_thickness_mm
    ijk = np.argwhere(free)
    if not len(ijk):
        return implant
    offset = np.array([sl.start for sl in box])
    lps = skull.index_to_lps(ijk + offset)
    outward = outward_directions(skull, lps, centre)

    def to_index(q: np.ndarray) -> np.ndarray:
        return skull.lps_to_index(q) - offset

    reaches = line_hits(part, to_index, lps, outward, np.arange(step, min_thickness_mm + 1e-9, step))
    # the implant goes on past the bar: already thick enough on this line
    beyond = line_hits(part, to_index, lps, outward, np.arange(min_thickness_mm + step, min_thickness_mm + 2 * spacing.max() + 1e-9, step))
    add = ijk[reaches & ~beyond]
    out = implant.copy()
    out[tuple((add + offset).T)] = True
    return out

