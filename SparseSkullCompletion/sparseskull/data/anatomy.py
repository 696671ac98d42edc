"""The skull's own frame for the clinical path: the centre of the braincase, and lines out from it.

Spanning, the occlusion filter, thickening and the no-network baseline all look out from the braincase
centre along straight lines; these are their shared pieces.
"""

from __future__ import annotations

import numpy as np

from sparseskull.data.volume import Volume


def braincase_centre(skull: Volume) -> np.ndarray:
    """Estimate the centre of the braincase (LPS mm) of a skull mask with a head-up pose.

    Left-right and front-back: the middle of the bone's extent; up-down: below the vertex by
    0.42 of the skull's length (the vault's height is about 0.8 of its half-length).
    """
    flat = np.flatnonzero(skull.array)  # the voxels in argwhere's order, at a quarter of its time on a 512^2 x Z grid
    if len(flat) == 0:
        raise ValueError("the skull mask is empty: there is no bone to cut a defect from")
    ijk = np.stack(np.unravel_index(flat[:: max(1, len(flat) // 200_000)], skull.shape), axis=1)
    lps = skull.index_to_lps(ijk)
    lo, hi = np.percentile(lps, 0.5, axis=0), np.percentile(lps, 99.5, axis=0)
    centre = 0.5 * (lo + hi)
    centre[2] = hi[2] - 0.42 * (hi[1] - lo[1])
    return centre


def outward_directions(skull: Volume, lps: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """Unit directions (N x 3) from ``centre`` (default: the skull's braincase centre) out through each point."""
    outward = lps - (braincase_centre(skull) if centre is None else centre)
    return outward / np.maximum(np.linalg.norm(outward, axis=1, keepdims=True), 1e-9)


def line_hits(mask: np.ndarray, to_index, lps: np.ndarray, outward: np.ndarray, distances) -> np.ndarray:
    """For each point, whether ``mask`` holds any of the points ``distances`` mm out along its line (``to_index``:
    LPS to ``mask``'s fractional indices, an affine map; points off the mask count as empty).
    The lines are marched in index space over the mask framed by one empty voxel (an index off the mask is clipped
    onto the frame), and a point leaves the march at its first hit."""
    hit = np.zeros(len(lps), bool)
    if len(lps) == 0 or mask.size == 0:
        return hit
    base = np.asarray(to_index(lps), float)
    along = np.asarray(to_index(lps + outward), float) - base  # index steps per mm of each line (affine: exact)
    framed = np.pad(np.asarray(mask, dtype=bool), 1)
    flat = framed.ravel()
    strides = [float(np.prod(framed.shape[a + 1:])) for a in range(3)]
    todo = np.arange(len(lps))
    b, a = base.T.copy(), along.T.copy()  # one row an axis: each step is three 1D passes
    for distance in distances:
        index = np.zeros(len(todo))
        for axis in range(3):
            index += (np.clip(np.rint(b[axis] + distance * a[axis]), -1, framed.shape[axis] - 2) + 1) * strides[axis]
        found = flat[index.astype(np.int64)]
        if found.any():
            hit[todo[found]] = True
            todo, b, a = todo[~found], b[:, ~found], a[:, ~found]
            if not len(todo):
                break
    return hit
