"""Baselines that `sparseskull evaluate` reports beside the network.

Opening: what a user gets with no network at all. The largest opening in the vault, seen from the braincase
centre, is found from the defective skull alone and spanned as the pipeline spans the network's implant
(:func:`sparseskull.implant.span.span_defect`). Lines are cast from the centre on a near-uniform (Fibonacci) sphere of
directions; a line that meets no bone is open; open directions are grouped by adjacency on the sphere, the groups
that reach below the centre's horizon are taken for the natural openings (the skull base, the face), and the
largest other group is the defect. A thin sheet of voxels along that group seeds the spanning step.

Mirroring: the manual method Slicer users reach for today for a one-sided defect. The defective skull
is reflected about its mid-sagittal plane and the reflected bone that falls where the skull has none
is the implant (then cleaned like the network's). The plane is found by a small search: the L-R
position and the yaw and roll angles that make the reflected skull overlap the skull most, on a coarse
copy. No library does this for a binary skull, hence the few lines here.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sparseskull.data.resample import block_max
from sparseskull.data.volume import Volume


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


def largest_opening_seed(skull: Volume, centre: np.ndarray | None = None, directions: int = 40_000, step_mm: float = 1.0,
                         below: float = -0.25) -> tuple[np.ndarray, dict]:
    """Voxels across the largest opening of the vault (see the module), on ``skull``'s grid, and what was found.
    ``below``: a group with a direction whose superior component is under this is a natural opening. Empty when
    the vault has no other opening."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    from sparseskull.data.anatomy import braincase_centre

    bone = np.asarray(skull.array, bool)
    seed = np.zeros(bone.shape, bool)
    c = braincase_centre(skull) if centre is None else np.asarray(centre, float)
    k = np.arange(directions) + 0.5
    z = 1 - 2 * k / directions
    phi = np.pi * (1 + 5**0.5) * k
    dirs = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], axis=1)  # LPS: z superior
    corners = skull.index_to_lps(np.array([[i, j, kk] for i in (0, bone.shape[0] - 1) for j in (0, bone.shape[1] - 1) for kk in (0, bone.shape[2] - 1)]))
    radii = np.arange(step_mm, float(np.linalg.norm(corners - c, axis=1).max()), step_mm)
    first = np.full(len(dirs), np.inf)
    shape = np.array(bone.shape)
    for start in range(0, len(radii), 32):  # all lines together, a slab of radii at a time
        r = radii[start:start + 32]
        ijk = np.rint(skull.lps_to_index((c + dirs[:, None, :] * r[None, :, None]).reshape(-1, 3))).astype(np.int64)
        ok = np.all((ijk >= 0) & (ijk < shape), axis=1)
        hit = np.zeros(len(ijk), bool)
        hit[ok] = bone[tuple(ijk[ok].T)]
        hit = hit.reshape(len(dirs), len(r))
        at = np.where(hit.any(axis=1), r[np.argmax(hit, axis=1)], np.inf)
        first = np.minimum(first, at)
    open_ = ~np.isfinite(first)
    info = {"open_directions": int(open_.sum()), "directions": directions}
    if not open_.any():
        return seed, {**info, "opening_directions": 0}
    spacing = np.sqrt(4 * np.pi / directions)
    idx = np.flatnonzero(open_)
    pairs = cKDTree(dirs[idx]).query_pairs(1.8 * spacing, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(idx), len(idx)))
    n, labels = connected_components(graph, directed=False)
    low = np.zeros(n, bool)
    low[np.unique(labels[dirs[idx, 2] < below])] = True
    sizes = np.bincount(labels, minlength=n).astype(float)
    sizes[low] = 0
    if sizes.max() <= 0:
        return seed, {**info, "opening_directions": 0}
    group = idx[labels == int(np.argmax(sizes))]
    # the sheet: each open line at the radius of the bone around the opening
    mean = dirs[group].mean(axis=0)
    mean /= np.linalg.norm(mean)
    angle = np.degrees(np.arccos(np.clip(dirs @ mean, -1, 1)))
    reach = angle[group].max() + 10.0
    ring = np.isfinite(first) & (angle <= reach)
    radius = float(np.median(first[ring])) if ring.any() else float(np.median(first[np.isfinite(first)]))
    ijk = np.rint(skull.lps_to_index(c + dirs[group] * radius)).astype(np.int64)
    ijk = ijk[np.all((ijk >= 0) & (ijk < shape), axis=1)]
    seed[tuple(ijk.T)] = True
    seed &= ~bone
    return seed, {**info, "opening_directions": int(len(group)), "opening_solid_angle_sr": round(len(group) * 4 * np.pi / directions, 4),
                  "radius_mm": round(radius, 1)}


def opening_completion(defective: Volume, min_mm3: float, keep_fraction: float = 0.2) -> tuple[np.ndarray, dict]:
    """The geometric baseline: the largest opening's seed, spanned and cleaned as the pipeline spans and cleans."""
    from sparseskull.data.anatomy import braincase_centre
    from sparseskull.implant.clean import clean_implant

    skull = np.asarray(defective.array, bool)
    centre = braincase_centre(defective)
    seed, info = largest_opening_seed(defective, centre)
    implant, _ = clean_implant(seed, defective, min_mm3, 0.0, keep_fraction, span_opening=True, centre=centre)
    return skull | implant, info
