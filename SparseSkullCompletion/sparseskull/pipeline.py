"""The clinical job, headless: from a head CT (or a skull mask) to a printable implant.

Stages: read -> skull (threshold, largest bone, crop) -> model grid (block-average to the model's
voxel spacing, as in training) -> network (completion; the completed skull is the input plus what
the network generates, the paper's Eq. 4) -> back onto the CT grid (the coarse completed skull
interpolated linearly, restricted to the coarse implant's neighbourhood) -> clean (clearance,
specks, parts away from the defect) -> mesh (closed, manifold, patient mm) -> write.

``sparseskull complete``, ``sparseskull demo``, ``sparseskull evaluate`` and the Slicer module all
run :func:`complete_skull` / :func:`run_complete`, so their figures are what a user gets.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from sparseskull import __version__
from sparseskull.io import looks_like_mask, read_volume, staged_output, write_volume
from sparseskull.preprocess import DEFAULT_THRESHOLD_HU, drop_mandible, largest_component, skull_mask_from_ct
from sparseskull.resample import block_max
from sparseskull.volume import Volume

STAGES = ("read", "skull", "model grid", "network", "CT grid", "clean", "mesh", "write")
INPUT_KINDS = ("auto", "ct", "mask")
DEFAULT_MIN_DEPTH_MM = 10.0
"""Implant pieces must reach this far from the bone (see reach_filter); chosen on training skulls, see the README."""


class InputError(ValueError):
    """The input cannot be completed; the message says why and what to do."""


@dataclass
class CompleteOptions:
    threshold_hu: float | str = DEFAULT_THRESHOLD_HU  # or "auto" (Otsu between soft tissue and bone)
    input_kind: str = "auto"  # auto: a volume holding only 0 and 1 is a mask, anything else a CT
    drop_mandible: bool = False  # also drop a mandible that touches the skull (preprocess.drop_mandible)
    model: str | None = None  # a shipped model's name or a path; None: the default
    device: str = "auto"
    backend: str = "torch"
    min_implant_mm3: float = 100.0  # implant pieces smaller than this are dropped
    clearance_mm: float = 0.0  # gap left between implant and bone, for fit
    keep_fraction: float = 0.2  # pieces smaller than this share of the largest piece are dropped (one defect, one plate)
    min_depth_mm: float = DEFAULT_MIN_DEPTH_MM  # what never gets this far from the bone is not implant (0: keep all)
    min_thickness_mm: float = 0.0  # grow the implant inwards where it is thinner than this (0: as completed)
    drop_behind_bone: bool = True  # drop implant parts inside the cranial cavity, behind intact bone (occlusion_filter)
    span_opening: bool = True  # complete the plate over the whole opening from the bone around it (fill.span_defect)
    smoothing_iterations: int = 20
    decimate: float = 0.5
    stl_space: str = "LPS"  # Slicer's file convention; RAS on request
    skull_stl: bool = False  # also export the completed skull as STL
    preview: bool = True
    max_extent: float = 1.5  # refuse a skull spanning more than this many times the model's field of view
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input kind must be one of {', '.join(INPUT_KINDS)}; got {self.input_kind!r}")
        if self.stl_space.upper() not in ("LPS", "RAS"):
            raise ValueError(f"the STL space must be LPS or RAS; got {self.stl_space!r}")
        if isinstance(self.threshold_hu, str) and self.threshold_hu != "auto":
            self.threshold_hu = float(self.threshold_hu)
        if not 0 <= self.keep_fraction <= 1:
            raise ValueError(f"keep_fraction is a share of the largest piece, in [0, 1]; got {self.keep_fraction}")
        if self.min_implant_mm3 < 0 or self.clearance_mm < 0 or self.min_depth_mm < 0 or self.min_thickness_mm < 0:
            raise ValueError("the minimum implant volume, depth and thickness and the clearance cannot be negative")
        if not 0 <= self.decimate < 1:
            raise ValueError(f"decimate is the share of triangles removed, in [0, 1); got {self.decimate}")


@dataclass
class CompletionResult:
    defective: Volume  # the skull mask on the input grid
    completed: Volume  # defective | implant
    implant: Volume
    mesh: object | None  # vtkPolyData of the implant, LPS or RAS as asked; None when the implant is empty
    report: dict
    input: Volume | None = None  # the CT (or mask) as read
    coarse: dict = field(default_factory=dict)  # the model-grid input and output, for inspection


Progress = Callable[[str, int, int], None]


def _peak_mib() -> float:
    from sparseskull.bench import _peak_mib as peak

    return peak()


def auto_threshold(ct: Volume) -> float:
    """Otsu's threshold between soft tissue and bone, over voxels from -100 HU up (air and fat left
    out), kept within 150..700 HU."""
    from skimage.filters import threshold_otsu

    values = np.asarray(ct.array[::2, ::2, ::2], dtype=np.float32)
    values = values[values >= -100]
    if values.size < 100 or values.max() <= values.min():
        return DEFAULT_THRESHOLD_HU
    return float(np.clip(threshold_otsu(values), 150.0, 700.0))


def skull_from_input(volume: Volume, options: CompleteOptions) -> tuple[Volume, dict]:
    """The defective skull mask on the input grid (largest connected bone), and what was done."""
    kind = options.input_kind
    if kind == "auto":
        kind = "mask" if looks_like_mask(volume) else "ct"
    info: dict = {"input_kind": kind}
    if kind == "mask":
        bone = np.asarray(volume.array) != 0
        if not bone.any():
            raise InputError("the mask is empty: there is no skull to complete")
    else:
        threshold = auto_threshold(volume) if options.threshold_hu == "auto" else float(options.threshold_hu)
        info["threshold_hu"] = round(threshold, 1)
        bone = np.asarray(skull_mask_from_ct(volume, threshold, keep_largest=False).array)
    total = int(bone.sum())
    skull = largest_component(bone)
    if options.drop_mandible:
        mandible_free, info["mandible_voxels"] = drop_mandible(volume.with_array(skull))
        skull = np.asarray(mandible_free.array)
    kept = int(skull.sum())
    info.update(bone_voxels=total, skull_voxels=kept, dropped_voxels=total - kept)
    if kept * volume.voxel_volume_mm3 < 20_000:  # 20 cm^3: a skull vault has several hundred
        raise InputError(f"the largest piece of bone is only {kept * volume.voxel_volume_mm3 / 1000:.1f} cm^3: "
                         "this does not look like a skull (wrong threshold, or not a head CT?)")
    return volume.with_array(skull), info


def model_factors(volume: Volume, model_spacing) -> tuple[int, int, int]:
    """Integer block sizes per axis that bring ``volume``'s spacing closest to the model's."""
    return tuple(max(1, int(round(m / s))) for m, s in zip(model_spacing, volume.spacing_mm))


def block_fraction(mask: np.ndarray, factors) -> np.ndarray:
    """Share of foreground voxels in each block of ``factors`` (the last blocks zero-padded)."""
    m = np.pad(mask, [(0, (-n) % f) for n, f in zip(mask.shape, factors)])
    sx, sy, sz = (n // f for n, f in zip(m.shape, factors))
    counts = m.reshape(sx, factors[0], sy, factors[1], sz, factors[2]).sum(axis=(1, 3, 5), dtype=np.int32)
    return counts / float(np.prod(factors))


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


def to_model_grid(skull: Volume, model_spacing, resolution: int, max_extent: float, margin: int = GRID_MARGIN) -> tuple[np.ndarray, ModelGrid]:
    """The skull block-averaged to the model's spacing (a coarse voxel is bone when at least half its
    block is, as the training copies were made), cropped to the skull with ``margin`` voxels of room."""
    factors = model_factors(skull, model_spacing)
    ijk = np.argwhere(skull.array)
    lo, hi = ijk.min(axis=0), ijk.max(axis=0) + 1
    shape = tuple(int(-(-(h - lo_) // f)) for lo_, h, f in zip(lo, hi, factors))
    limit = max_extent * resolution
    if max(shape) > limit:
        extent = [round(float(n * f * s)) for n, f, s in zip(shape, factors, skull.spacing_mm)]
        fov = round(resolution * float(max(model_spacing[:2])))
        raise InputError(f"the skull spans {extent} mm, far more than the {fov} mm field of view the model was trained on: "
                         "is this a head CT? (a whole-body scan, or a wrong voxel spacing in the file?)")
    crop = np.zeros(tuple(n * f for n, f in zip(shape, factors)), dtype=bool)
    src = skull.array[lo[0]:lo[0] + crop.shape[0], lo[1]:lo[1] + crop.shape[1], lo[2]:lo[2] + crop.shape[2]]
    crop[: src.shape[0], : src.shape[1], : src.shape[2]] = src
    coarse = block_fraction(crop, factors) >= 0.5
    coarse = np.pad(coarse, margin)
    return coarse, ModelGrid(lo, factors, shape, margin)


def network_points(model, ijk: np.ndarray, backend: str, device, tau: float) -> np.ndarray:
    """The voxel coordinates (M x 3) the network outputs for input voxels ``ijk`` (N x 3, one skull), in inference."""
    import torch

    from sparseskull.sparse.backends import from_backend, to_backend
    from sparseskull.sparse.tensor import SparseTensor

    coords = torch.from_numpy(np.concatenate([np.zeros((len(ijk), 1), np.int64), ijk], axis=1)).to(device)
    x = SparseTensor.from_coords(coords, torch.ones(len(coords), 1, device=device))
    with torch.inference_mode():
        out = model(to_backend(x, backend), tau=tau)
    return from_backend(out.output).coords[:, 1:].cpu().numpy() if out.output is not None else np.zeros((0, 3), int)


def run_network(model, coarse: np.ndarray, backend: str, device, tau: float) -> np.ndarray:
    """Complete a coarse skull: the input voxels plus those the network generates (paper Eq. 4)."""
    ijk = np.argwhere(coarse)
    if len(ijk) == 0:
        raise InputError("the skull vanishes at the model's resolution (too thin or too small for this model)")
    pred = network_points(model, ijk, backend, device, tau)
    inside = np.all((pred >= 0) & (pred < np.array(coarse.shape)), axis=1)
    completed = coarse.copy()
    completed[tuple(pred[inside].T)] = True
    return completed


def _upsample(coarse: np.ndarray, grid: ModelGrid, order: int) -> np.ndarray:
    """Coarse values on the fine crop: fine voxel i sits at coarse coordinate (i - (f - 1) / 2) / f."""
    f = np.asarray(grid.factors, dtype=np.float64)
    offset = -(f - 1) / 2 / f + grid.margin
    return ndimage.affine_transform(coarse.astype(np.float32), 1.0 / f, offset=offset, output_shape=grid.fine_shape(),
                                    order=order, mode="constant", cval=0.0)


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
    solid = _upsample(coarse_out[a[0]:b[0], a[1]:b[1], a[2]:b[2]], sub, 1) >= 0.5
    region = _upsample(near[a[0]:b[0], a[1]:b[1], a[2]:b[2]], sub, 0) >= 0.5
    implant = solid & region
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.array(implant.shape), skull.shape)
    if np.any(hi <= lo):
        return full
    s = tuple(slice(int(l_ - st), int(h - st)) for l_, h, st in zip(lo, hi, start))
    d = tuple(slice(int(l_), int(h)) for l_, h in zip(lo, hi))
    full[d] = implant[s] & ~np.asarray(skull.array[d], dtype=bool)
    return full


def _bounding_box(mask: np.ndarray, margin) -> tuple[slice, ...] | None:
    """The box around a mask's voxels, widened by ``margin`` voxels per axis (None for an empty mask)."""
    box = []
    for axis, m in enumerate(margin):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if not len(hit):
            return None
        box.append(slice(max(int(hit[0]) - int(m), 0), min(int(hit[-1]) + int(m) + 1, mask.shape[axis])))
    return tuple(box)


def _near_seeds(implant: np.ndarray, box, seeds: np.ndarray, factors, coarse_spacing, within_mm: float) -> np.ndarray:
    """The implant's voxels within ``within_mm`` (plus a coarse voxel's diagonal) of ``seeds``, a mask on the coarse
    grid of ``factors`` blocks over ``box``; empty when there is no seed."""
    out = np.zeros_like(implant)
    if not seeds.any():
        return out
    near = ndimage.distance_transform_edt(~seeds, sampling=coarse_spacing) <= within_mm + float(np.linalg.norm(coarse_spacing))
    for axis, f in enumerate(factors):  # back to the full grid (blocks to voxels)
        near = np.repeat(near, f, axis=axis)
    shape = tuple(sl.stop - sl.start for sl in box)
    out[box] = implant[box] & near[: shape[0], : shape[1], : shape[2]]
    return out


def _coarse_around(implant: np.ndarray, skull: Volume, margin_mm: float, voxel_mm: float):
    """The box around the implant widened by ``margin_mm``, and on a grid of about ``voxel_mm`` blocks over it: the
    block sizes, their spacing, and the implant and the bone max-pooled to it."""
    spacing = np.asarray(skull.spacing_mm, float)
    factors = np.maximum(1, np.floor(voxel_mm / spacing)).astype(int)
    box = _bounding_box(implant, np.ceil(margin_mm / spacing) + 2 * factors)
    return box, factors, spacing * factors, block_max(implant[box], factors), block_max(np.asarray(skull.array[box], bool), factors)


def _outwards(skull: Volume, lps: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """Unit directions (N x 3) from ``centre`` (default: the skull's braincase centre) out through each point."""
    from sparseskull.synth.defects import braincase_centre

    outward = lps - (braincase_centre(skull) if centre is None else centre)
    return outward / np.maximum(np.linalg.norm(outward, axis=1, keepdims=True), 1e-9)


def _meets(mask: np.ndarray, to_index, lps: np.ndarray, outward: np.ndarray, distances) -> np.ndarray:
    """For each point, whether ``mask`` holds any of the points ``distances`` mm out along its line (``to_index``:
    LPS to ``mask``'s fractional indices; points off the mask count as empty)."""
    hit = np.zeros(len(lps), bool)
    for distance in distances:
        c = np.rint(to_index(lps + distance * outward)).astype(int)
        ok = np.all((c >= 0) & (c < np.array(mask.shape)), axis=1)
        hit[ok] |= mask[tuple(c[ok].T)]
    return hit


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
    return _near_seeds(implant, box, depth > bar, factors, coarse_spacing, bar + rim_mm)


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
    occluded = _meets(bone, lambda q: q @ from_lps[:3, :3].T + from_lps[:3, 3], lps, _outwards(skull, lps, centre),
                      np.arange(step, reach_mm + 1e-9, step))
    seeds = np.zeros_like(part)
    seeds[tuple(ijk[~occluded].T)] = True
    return _near_seeds(implant, box, seeds, factors, coarse_spacing, rim_mm)


def clean_implant(implant: np.ndarray, skull: Volume, min_mm3: float, clearance_mm: float, keep_fraction: float = 0.2,
                  min_depth_mm: float = 0.0, drop_behind_bone: bool = False, span_opening: bool = False,
                  centre: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """What reaches ``min_depth_mm`` into the defect (:func:`reach_filter`), with ``drop_behind_bone`` not behind intact
    bone (:func:`occlusion_filter`); with ``span_opening``, the plate completed over the opening it lies in and what
    lies off that plate dropped (:func:`sparseskull.fill.span_defect`); clearance from the bone, then only the pieces
    that touch the bone (the defect's rim), hold at least ``min_mm3`` and at least ``keep_fraction`` of the largest such piece.
    ``centre``: the braincase centre both steps look out from (default: computed once here, when either runs)."""
    if centre is None and (drop_behind_bone or span_opening) and implant.any():
        from sparseskull.synth.defects import braincase_centre

        centre = braincase_centre(skull)
    info = {"raw_voxels": int(implant.sum())}
    implant = reach_filter(implant, skull, min_depth_mm)
    info["shallow_voxels"] = info["raw_voxels"] - int(implant.sum())
    if drop_behind_bone:
        before = int(implant.sum())
        implant = occlusion_filter(implant, skull, centre=centre)
        info["behind_bone_voxels"] = before - int(implant.sum())
    if span_opening and implant.any():
        from sparseskull.fill import span_defect

        shell, off = span_defect(implant, skull, centre=centre)
        info["off_plate_voxels"] = int((implant & off).sum())
        info["spanned_voxels"] = int((shell & ~implant).sum())
        implant = (implant & ~off) | shell
    if not implant.any():
        return implant, {**info, "pieces_kept": 0, "pieces_dropped": 0, "voxels": 0}
    spacing = np.asarray(skull.spacing_mm)
    labels, count = ndimage.label(implant, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels[implant], minlength=count + 1) * skull.voxel_volume_mm3
    candidates = np.flatnonzero(sizes >= min_mm3 * (1.0 if clearance_mm == 0 else 0.5))  # before the costly steps
    cleaned = np.zeros_like(implant)
    if len(candidates):
        boxes = ndimage.find_objects(labels)
        reach = np.ceil((clearance_mm + 1.5 * spacing.max()) / spacing).astype(int) + 1
        lo = np.min([[sl.start for sl in boxes[c - 1]] for c in candidates], axis=0) - reach
        hi = np.max([[sl.stop for sl in boxes[c - 1]] for c in candidates], axis=0) + reach
        box = tuple(slice(int(max(a, 0)), int(min(b, n))) for a, b, n in zip(lo, hi, implant.shape))
        part = np.isin(labels[box], candidates)
        bone = np.asarray(skull.array[box], dtype=bool)
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
        cleaned[box] = keep[sub]
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
    box = _bounding_box(implant, np.ceil(min_thickness_mm / spacing) + 1)
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
    outward = _outwards(skull, lps, centre)

    def to_index(q: np.ndarray) -> np.ndarray:
        return skull.lps_to_index(q) - offset

    reaches = _meets(part, to_index, lps, outward, np.arange(step, min_thickness_mm + 1e-9, step))
    # the implant goes on past the bar: already thick enough on this line
    beyond = _meets(part, to_index, lps, outward, np.arange(min_thickness_mm + step, min_thickness_mm + 2 * spacing.max() + 1e-9, step))
    add = ijk[reaches & ~beyond]
    out = implant.copy()
    out[tuple((add + offset).T)] = True
    return out


class NetworkCompleter:
    """The trained network as the pipeline's completion step: a model file (a shipped model's name, a
    path, or None for the default), on a device and a sparse backend. ``architectures``: those accepted
    (default: the sparse network only; the dense baseline must be asked for)."""

    def __init__(self, spec=None, device: str = "auto", backend: str = "torch", architectures: tuple[str, ...] | None = None):
        from sparseskull.models import resolve_model
        from sparseskull.sparse.backends import BACKENDS
        from sparseskull.train import pick_device
        from sparseskull.weights import DENSE, SPARSE, load_model

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.path = resolve_model(spec)
        self.device = pick_device(device)
        self.model, self.info = load_model(self.path, device=self.device, architectures=architectures or (SPARSE,))
        self.dense = self.info.architecture == DENSE  # the dense baseline (evaluate --baselines dense)
        self.backend = "dense" if self.dense else backend
        if self.info.task != "completion":
            raise InputError(f"{self.path}: a {self.info.task} model; completing a skull needs a completion model")
        if self.info.spacing_mm is None:
            raise InputError(f"{self.path}: the model file does not say its voxel spacing, so the CT cannot be brought to its grid")
        self.name = Path(self.path).stem

    def __call__(self, coarse: np.ndarray, grid: "ModelGrid | None" = None) -> np.ndarray:
        if self.dense:
            from sparseskull.dense_baseline import complete_dense

            return complete_dense(self.model, coarse, device=self.device)
        return run_network(self.model, coarse, self.backend, self.device, self.info.tau)


def complete_skull(source, options: CompleteOptions | None = None, progress: Progress | None = None, completer=None) -> CompletionResult:
    """Run the pipeline on a path (image file or DICOM folder) or a :class:`Volume`; nothing is written.

    ``completer``: the completion step, by default a :class:`NetworkCompleter` for ``options.model``.
    Any object with ``info`` (a ModelInfo: resolution, spacing_mm), ``name``, ``device``, ``backend``
    and a call ``(coarse, grid)`` -> completed coarse grid will do; the tests use one that returns the
    known answer, to check every stage around the network."""
    import torch

    from sparseskull.mesh import mask_to_mesh

    options = options or CompleteOptions()
    if options.threads:
        torch.set_num_threads(options.threads)
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {}
    t_start = time.perf_counter()
    clock = [t_start]

    def stage(name: str) -> None:
        if progress is not None:
            progress(name, STAGES.index(name), len(STAGES))

    def done(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 3)
        peaks[name] = _peak_mib()
        clock[0] = now

    stage("read")
    if isinstance(source, Volume):
        volume, source_name = source, "volume"
    else:
        volume, source_name = read_volume(source), str(source)
    if completer is None:
        completer = NetworkCompleter(options.model, options.device, options.backend)
    info = completer.info
    done("read")

    stage("skull")
    skull, skull_info = skull_from_input(volume, options)
    done("skull")

    stage("model grid")
    coarse_in, grid = to_model_grid(skull, info.spacing_mm, info.resolution, options.max_extent)
    coarse_spacing = [round(f * s, 3) for f, s in zip(grid.factors, skull.spacing_mm)]
    warnings = []
    mismatch = [abs(c / m - 1) for c, m in zip(coarse_spacing, info.spacing_mm)]
    if max(mismatch) > 0.25:
        warnings.append(f"the CT's spacing does not divide into the model's: the model grid has {coarse_spacing} mm voxels, "
                        f"the model was trained at {list(info.spacing_mm)} mm")
    done("model grid")

    stage("network")
    coarse_out = completer(coarse_in, grid)
    done("network")

    stage("CT grid")
    raw = to_ct_grid(coarse_in, coarse_out, grid, skull)
    done("CT grid")

    stage("clean")
    from sparseskull.synth.defects import braincase_centre

    centre = braincase_centre(skull) if raw.any() else None  # the filters, spanning and thickening look out from it: once
    implant_array, clean_info = clean_implant(raw, skull, options.min_implant_mm3, options.clearance_mm, options.keep_fraction,
                                              options.min_depth_mm, options.drop_behind_bone, options.span_opening, centre)
    if options.min_thickness_mm > 0 and implant_array.any():
        before = int(implant_array.sum())
        implant_array = ensure_thickness(implant_array, skull, options.min_thickness_mm, options.clearance_mm, centre=centre)
        clean_info["thickened_voxels"] = int(implant_array.sum()) - before
    implant = skull.with_array(implant_array)
    completed = skull.with_array(np.asarray(skull.array, bool) | implant_array)
    done("clean")

    stage("mesh")
    mesh = None
    mesh_info: dict = {"written": False}
    if implant_array.any():
        from sparseskull.mesh import check_mesh

        mesh = mask_to_mesh(implant, options.stl_space, smoothing_iterations=options.smoothing_iterations, decimate=options.decimate)
        check = check_mesh(mesh)
        mesh_info = {"written": True, "space": options.stl_space.upper(), "triangles": check.triangles, "watertight": check.watertight,
                     "volume_cm3": round(check.volume_mm3 / 1000, 3), "area_cm2": round(check.area_mm2 / 100, 2)}
    done("mesh")

    vox_cm3 = skull.voxel_volume_mm3 / 1000.0
    implant_cm3 = round(float(implant_array.sum()) * vox_cm3, 3)
    report = {
        "sparseskull": __version__,
        "input": source_name,
        "grid": list(volume.shape),
        "spacing_mm": [round(s, 4) for s in volume.spacing_mm],
        "oblique": bool(not np.allclose(volume.direction, np.diag(np.sign(np.diag(volume.direction))), atol=1e-4)),
        **skull_info,
        "skull_volume_cm3": round(float(skull.array.sum()) * vox_cm3, 3),
        "model": {"path": str(getattr(completer, "path", "")), "name": completer.name, "resolution": info.resolution, "spacing_mm": list(info.spacing_mm),
                  "channels": list(info.channels), "tau": info.tau, "validation": info.metrics},
        "model_grid": {"shape": [int(n) for n in coarse_in.shape], "factors": list(grid.factors), "spacing_mm": coarse_spacing,
                       "input_points": int(coarse_in.sum()), "completed_points": int(coarse_out.sum()),
                       "generated_points": int((coarse_out & ~coarse_in).sum())},
        "device": str(completer.device),
        "backend": completer.backend,
        "defect_found": bool(implant_array.any()),
        "implant": {"voxels": int(implant_array.sum()), "volume_cm3": implant_cm3, **clean_info,
                    "centroid_lps_mm": [round(float(v), 2) for v in implant.centroid_lps()] if implant_array.any() else None},
        "mesh": mesh_info,
        "options": {k: v for k, v in asdict(options).items() if k not in ("model",)},
        "warnings": warnings,
        "seconds": timings,
        "peak_mib_after": peaks,
    }
    if not implant_array.any():
        report["message"] = ("no defect found: the network added no bone beyond specks, so there is no implant "
                             "(an empty implant is a valid answer for an intact skull)")
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    return CompletionResult(skull, completed, implant, mesh, report, input=volume,
                            coarse={"input": coarse_in, "output": coarse_out, "grid": grid})


def preview(result: CompletionResult, path: Path, title: str = "") -> Path:
    """The implant in place on the skull (3D), and three orthogonal slices through it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparseskull.render import BONE, IMPLANT, render_surfaces, slice_views, view_towards

    has_implant = bool(result.implant.array.any())
    focus = result.implant if has_implant else result.defective
    centre = [int(c) for c in np.argwhere(focus.array).mean(axis=0)]
    background = result.input if result.input is not None and result.input.shape == result.defective.shape else result.defective
    is_ct = background is result.input and not looks_like_mask(background)
    fig, axes = plt.subplots(1, 4, figsize=(20, 5.4), facecolor="black")
    views = zip(axes, slice_views(background, centre), slice_views(result.defective, centre), slice_views(result.implant, centre))
    for ax, (name, img, aspect), (_, bone, _), (_, imp, _) in views:
        ax.imshow(img, cmap="gray", vmin=-150 if is_ct else 0, vmax=1300 if is_ct else 1, aspect=aspect, interpolation="nearest")
        ax.contour(bone.astype(float), levels=[0.5], colors=["#ffd24d"], linewidths=0.8)
        if imp.any():
            ax.contourf(imp.astype(float), levels=[0.5, 1.5], colors=["#f27319"], alpha=0.7)
        ax.set_title(f"{name}: skull (yellow), implant (orange)", color="white")
        ax.axis("off")
    view = view_towards(result.implant, result.defective) if has_implant else "oblique"
    image = render_surfaces([(result.defective, BONE, 1.0), (result.implant, IMPLANT, 1.0)], view=view, size=(540, 540))
    axes[3].imshow(image)
    axes[3].set_title(title or ("implant (orange) on the skull" if has_implant else "no defect found"), color="white")
    axes[3].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)
    return path


def write_outputs(result: CompletionResult, folder: Path, options: CompleteOptions) -> list[str]:
    """Implant STL, masks (with the input's geometry), report and preview into ``folder``."""
    from sparseskull.mesh import mask_to_mesh, write_stl

    written = []
    if result.mesh is not None:
        write_stl(result.mesh, folder / "implant.stl", options.stl_space)
        written.append("implant.stl")
    for name, vol in (("implant", result.implant), ("completed_skull", result.completed), ("defective_skull", result.defective)):
        write_volume(vol.with_array(np.asarray(vol.array, dtype=np.uint8)), folder / f"{name}.nrrd")
        written.append(f"{name}.nrrd")
    if options.skull_stl:
        skull_mesh = mask_to_mesh(result.completed, options.stl_space, sigma=0.6, smoothing_iterations=options.smoothing_iterations, decimate=0.8)
        write_stl(skull_mesh, folder / "completed_skull.stl", options.stl_space)
        written.append("completed_skull.stl")
    if options.preview:
        preview(result, folder / "preview.png")
        written.append("preview.png")
    return written


def run_complete(source, out: str | os.PathLike, options: CompleteOptions | None = None, progress: Progress | None = None,
                 extra_report: Callable[[CompletionResult], dict] | None = None, completer=None) -> CompletionResult:
    """:func:`complete_skull`, then every output written to ``out`` (all or nothing: a staging folder
    beside it replaces it only when everything succeeded)."""
    options = options or CompleteOptions()
    out = Path(out)
    result = complete_skull(source, options, progress, completer)
    if progress is not None:
        progress("write", STAGES.index("write"), len(STAGES))
    t0 = time.perf_counter()
    with staged_output(out) as stage:
        files = write_outputs(result, stage, options)
        if extra_report is not None:
            result.report.update(extra_report(result))
        result.report["seconds"]["write"] = round(time.perf_counter() - t0, 3)
        result.report["peak_mib"] = _peak_mib()
        result.report["files"] = files + ["report.json"]
        (stage / "report.json").write_text(json.dumps(result.report, indent=1) + "\n")
    return result


# ---------------------------------------------------------------------------- in a child process (Slicer)

# CompleteOptions field -> `sparseskull complete` flag; keep in step with cli.py (a test round-trips them)
_FLAGS = {"threshold_hu": "--threshold-hu", "input_kind": "--input-kind", "model": "--model", "device": "--device", "backend": "--backend",
          "min_implant_mm3": "--min-implant-mm3", "min_depth_mm": "--min-depth-mm", "min_thickness_mm": "--min-thickness-mm", "clearance_mm": "--clearance-mm", "smoothing_iterations": "--smoothing",
          "decimate": "--decimate", "stl_space": "--stl-space", "threads": "--threads"}


def options_to_args(options: CompleteOptions) -> list[str]:
    """The ``sparseskull complete`` arguments that reproduce ``options``."""
    default = CompleteOptions()
    args: list[str] = []
    for name, flag in _FLAGS.items():
        value = getattr(options, name)
        if value is not None and value != getattr(default, name):
            args += [flag, str(value)]
    if options.skull_stl:
        args.append("--skull-stl")
    if not options.preview:
        args.append("--no-preview")
    if not options.drop_behind_bone:
        args.append("--keep-behind-bone")
    if not options.span_opening:
        args.append("--no-span")
    if options.drop_mandible:
        args.append("--drop-mandible")
    for name in ("keep_fraction", "max_extent"):
        if getattr(options, name) != getattr(default, name):
            raise ValueError(f"{name} has no command-line flag; run complete_skull() in this process to change it")
    return args


class CompletionProcess:
    """``sparseskull complete`` in a child process, its stage progress parsed from the output.

    ``poll()`` takes the new output lines and updates ``stage``/``fraction``; ``cancel()`` ends the run and
    its children (nothing is left in ``out``: the run writes there only on success); ``error()`` is the
    message a failed run gave.
    """

    _STAGE = re.compile(r"^\[(\d+)/(\d+)\] (.+) \([\d.]+ s\)$")
    _ERROR = re.compile(r"^sparseskull complete: error: (.+)$")

    def __init__(self, source, out, options: CompleteOptions | None = None, python: str | None = None):
        from sparseskull.process import ChildProcess

        self.out = Path(out)
        self.stage, self.fraction = "starting", 0.0
        self.child = ChildProcess("sparseskull", ["complete", str(source), "--out", str(out), *options_to_args(options or CompleteOptions())],
                                  python=python)

    @property
    def log(self) -> list[str]:
        return self.child.log

    def poll(self) -> list[str]:
        lines = self.child.lines()
        for line in lines:
            match = self._STAGE.match(line)
            if match:
                index, total = int(match[1]), int(match[2])
                self.stage, self.fraction = match[3], (index - 1) / total
        self._finished()
        return lines

    def _finished(self) -> bool:
        if not self.child.drained():
            return False
        if self.child.returncode == 0:
            self.stage, self.fraction = "done", 1.0
        return True

    def running(self) -> bool:
        """False once the child has ended and ``poll()`` has taken all its output."""
        return not self._finished()

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    def error(self) -> str | None:
        """The core's message for a failed run (or the last line of its traceback); None while running or on success."""
        if self.running() or self.child.returncode == 0:
            return None
        self.poll()
        for line in reversed(self.log):
            match = self._ERROR.match(line)
            if match:
                return match[1]
        if self.child.returncode is not None and self.child.returncode < 0:
            return f"stopped by signal {-self.child.returncode}"
        return self.log[-1] if self.log else f"exited with code {self.child.returncode}"

    def cancel(self) -> None:
        self.child.cancel()
        self.poll()

    def wait(self, timeout: float | None = None) -> int:
        code = self.child.wait(timeout)
        self.poll()
        return code
