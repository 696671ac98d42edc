"""Anatomically plausible synthetic skulls on head-CT grids, deterministic for a seed.

The skull is built in its own anatomical frame (mm; x to the patient's left, y posterior,
z superior: LPS axes; origin at the centre of the braincase) from signed-distance shapes:
- braincase: an egg-shaped shell whose outer radius varies smoothly with direction and whose
  floor is flattened into a skull base with anterior/middle/posterior depths; vault thickness
  3-10 mm, thinner at the temporal squama and thicker at the occiput and skull base;
- the foramen magnum cut through the base;
- a rough facial skeleton: midface shell, orbits (open cups under the frontal bone), nasal
  aperture, cheek bones, zygomatic arches, maxillary alveolar arch and mastoid processes.
The frame is then posed (small rotation) in a CT grid of 512 x 512 x Z with CT-like spacing and,
for some seeds, a gantry tilt (oblique direction matrix), as in the real SkullFix cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparseskull.data.synth import shapes
from sparseskull.data.volume import Volume

THICKNESS_RANGE_MM = (3.0, 10.0)


@dataclass(frozen=True)
class SkullShape:
    """Shape parameters of one synthetic skull (all lengths in mm)."""

    half_width: float  # outer semi-axis, left-right
    half_length: float  # outer semi-axis, anterior-posterior
    height: float  # outer semi-axis above the centre (vertex)
    base_depth: float  # depth of the middle cranial fossa below the centre
    base_slope: float  # how much deeper the posterior fossa is than the anterior one
    egg: float  # relative widening towards the back of the head
    thickness: float  # typical vault thickness
    bumps: np.ndarray  # (K, 5): amplitude, frequency, phase, and a direction (azimuth, elevation)
    thickness_waves: np.ndarray  # same layout, relative modulation of the thickness
    face_scale: float
    rotation: np.ndarray  # 3x3, skull frame -> patient LPS axes
    centre_lps: np.ndarray  # braincase centre in patient LPS mm


def _waves(rng: np.random.Generator, count: int, amplitude: float) -> np.ndarray:
    return np.column_stack(
        [
            rng.uniform(0.3, 1.0, count) * amplitude,
            rng.uniform(1.5, 4.0, count),
            rng.uniform(0, 2 * np.pi, count),
            rng.uniform(0, 2 * np.pi, count),
            rng.uniform(-np.pi / 2, np.pi / 2, count),
        ]
    )


def _wave_sum(d: np.ndarray, waves: np.ndarray) -> np.ndarray:
    """A smooth random function of the direction ``d`` (N x 3 unit vectors)."""
    out = np.zeros(len(d), dtype=np.float32)
    for amp, freq, phase, az, el in waves:
        n = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], dtype=np.float32)
        out += np.float32(amp) * np.cos(np.float32(freq) * (d @ n) + np.float32(phase))
    return out


def _rotation(rng: np.random.Generator, max_deg=(8.0, 4.0, 3.0)) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(max_deg))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_shape(rng: np.random.Generator, max_half_length: float = 98.0) -> SkullShape:
    """Draw the shape of one adult skull."""
    half_length = rng.uniform(84.0, min(98.0, max_half_length))
    return SkullShape(
        half_width=rng.uniform(0.74, 0.84) * half_length,
        half_length=half_length,
        height=rng.uniform(0.80, 0.88) * half_length,
        base_depth=rng.uniform(48.0, 54.0),
        base_slope=rng.uniform(13.0, 17.0),
        egg=rng.uniform(0.03, 0.08),
        thickness=rng.uniform(5.5, 7.5),
        bumps=_waves(rng, 5, 0.012),
        thickness_waves=_waves(rng, 4, 0.05),
        face_scale=half_length / 86.0 * rng.uniform(0.95, 1.05),
        rotation=_rotation(rng),
        centre_lps=np.array([rng.uniform(-5, 5), rng.uniform(-30, 0), rng.uniform(0, 60)]),
    )


# ---------------------------------------------------------------------------------------------
# braincase


def outer_radius(shape: SkullShape, d: np.ndarray) -> np.ndarray:
    """Outer radius of the braincase along unit directions ``d`` (skull frame).

    Horizontal sections are ellipses (wider at the back); vertically the outline is a
    superellipse, rounder above the widest level and box-like below it, so that the temporal
    walls drop almost vertically to a flat skull base (deeper at the back than at the front).
    """
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    a = shape.half_width * (1.0 + shape.egg * dy)
    horizontal = np.sqrt((dx / a) ** 2 + (dy / shape.half_length) ** 2)
    top = dz >= 0
    depth = np.where(top, shape.height, shape.base_depth + shape.base_slope * dy)
    power = np.where(top, 2.5, 5.0).astype(np.float32)
    radius = (horizontal**power + (np.abs(dz) / depth) ** power) ** (-1.0 / power)
    return radius * (1.0 + _wave_sum(d, shape.bumps))


def thickness(shape: SkullShape, d: np.ndarray) -> np.ndarray:
    """Radial bone thickness (mm) along unit directions ``d``: thin temporal squama, thick occiput and base."""
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    temporal = np.exp(-((np.abs(dx) - 1.0) ** 2) / 0.10) * np.exp(-((dz + 0.10) ** 2) / 0.08)
    occiput = np.exp(-((dy - 0.85) ** 2 + (dz + 0.15) ** 2) / 0.06)
    base = np.clip(-dz - 0.35, 0.0, None)
    t = shape.thickness * (1.0 - 0.50 * temporal) * (1.0 + _wave_sum(d, shape.thickness_waves))
    t = t + 3.0 * occiput + 6.0 * base
    return np.clip(t, *THICKNESS_RANGE_MM)


def _braincase(shape: SkullShape, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bone, cavity) signed distances for points ``q`` in the skull frame."""
    r = np.linalg.norm(q, axis=1)
    d = q / np.maximum(r, 1e-6)[:, None]
    r_out = outer_radius(shape, d)
    r_in = r_out - thickness(shape, d)
    cavity = r - r_in
    bone = np.maximum(r - r_out, -cavity)
    fm_y = 0.12 * shape.half_length
    foramen = shapes.ellipsoid(q, (0.0, fm_y, -shape.base_depth), (15.0, 18.0, 40.0))
    return shapes.subtract(bone, foramen), cavity


# ---------------------------------------------------------------------------------------------
# face


def _face(shape: SkullShape, q: np.ndarray, cavity: np.ndarray) -> np.ndarray:
    k = shape.face_scale
    front = -0.93 * shape.half_length
    floor = shape.base_depth - shape.base_slope
    zo = -floor - 5.0 * k  # orbit centre height: the orbit roofs are the anterior skull base
    orbit_axes = np.array([20.0, 24.0, 17.5]) * k
    orbits = []
    for side in (-1.0, 1.0):
        c = (side * 34.0 * k, front + 22.0 * k, zo)
        cav = shapes.ellipsoid(q, c, orbit_axes)
        wall = shapes.subtract(shapes.ellipsoid(q, c, orbit_axes + 3.5), cav)
        opening = q[:, 1] - (front + 3.0 * k)  # the cup is open towards the front
        orbits.append((cav, shapes.intersect(wall, -opening)))
    mid_c = np.array([0.0, front + 38.0 * k, zo - 12.0 * k])
    mid_axes = np.array([56.0, 44.0, 42.0]) * k
    midface = shapes.subtract(shapes.ellipsoid(q, mid_c, mid_axes), shapes.ellipsoid(q, mid_c, mid_axes - 4.0))
    midface = shapes.intersect(midface, q[:, 1] - (front + 58.0 * k))
    nose = shapes.union(
        shapes.ellipsoid(q, (0.0, front, zo - 20.0 * k), (8.5 * k, 30.0, 11.0 * k)),
        shapes.ellipsoid(q, (0.0, front, zo - 31.0 * k), (12.0 * k, 30.0, 9.0 * k)),
    )
    midface = shapes.subtract(midface, shapes.union(nose, orbits[0][0], orbits[1][0], cavity))

    brow = shapes.capsule(q, (-44.0 * k, front + 6.0 * k, zo + 15.0 * k), (44.0 * k, front + 6.0 * k, zo + 15.0 * k), 6.0 * k)
    parts = [midface, shapes.subtract(brow, cavity), orbits[0][1], orbits[1][1]]
    for side in (-1.0, 1.0):
        cheek = (side * 50.0 * k, front + 24.0 * k, zo - 16.0 * k)
        temporal = (side * 0.80 * shape.half_width, front + 80.0 * k, zo - 6.0 * k)
        parts.append(shapes.ellipsoid(q, cheek, np.array([10.0, 10.0, 14.0]) * k))
        parts.append(shapes.capsule(q, cheek, temporal, 4.0 * k))
        parts.append(
            shapes.ellipsoid(q, (side * 0.72 * shape.half_width, 0.12 * shape.half_length, -floor - 14.0), (8.0, 10.0, 15.0))
        )
    # alveolar arch of the maxilla: a horseshoe tube along the front of the lower midface
    za = mid_c[2] - mid_axes[2] + 7.0 * k
    ring_c = np.array([0.0, front + 40.0 * k])
    ring_axes = np.array([27.0, 36.0]) * k
    rel = (q[:, :2] - ring_c) / ring_axes
    rho = np.sqrt((rel**2).sum(axis=1))
    arch = np.sqrt(((rho - 1.0) * 27.0 * k) ** 2 + (q[:, 2] - za) ** 2) - 6.0 * k
    parts.append(shapes.intersect(arch, q[:, 1] - ring_c[1]))
    return shapes.union(*parts)


def face_box(shape: SkullShape) -> tuple[np.ndarray, np.ndarray]:
    """A box (skull frame, mm) that holds every part of the face, with a margin for the narrow band."""
    k = shape.face_scale
    front = -0.93 * shape.half_length
    lo = np.array([-shape.half_width - 10.0, front - 25.0, -(shape.base_depth + 75.0 * k)], dtype=np.float32)
    hi = np.array([shape.half_width + 10.0, 0.3 * shape.half_length, -10.0], dtype=np.float32)
    return lo, hi


def skull_sdf(shape: SkullShape):
    """The signed distance of the complete skull, as a function of LPS points."""

    def sdf(lps: np.ndarray) -> np.ndarray:
        q = ((lps - shape.centre_lps.astype(np.float32)) @ shape.rotation.astype(np.float32)).astype(np.float32)
        bone, cavity = _braincase(shape, q)
        lo, hi = face_box(shape)
        near = np.all((q >= lo) & (q <= hi), axis=1)
        bone[near] = np.minimum(bone[near], _face(shape, q[near], cavity[near]))
        return bone

    return sdf


def to_skull_frame(shape: SkullShape, lps: np.ndarray) -> np.ndarray:
    return (np.asarray(lps, dtype=np.float64) - shape.centre_lps) @ shape.rotation


def to_lps(shape: SkullShape, q: np.ndarray) -> np.ndarray:
    return np.asarray(q, dtype=np.float64) @ shape.rotation.T + shape.centre_lps


# ---------------------------------------------------------------------------------------------
# the CT grid


def random_grid(rng: np.random.Generator, shape: SkullShape, size: int = 512, spacing_mm=None) -> Volume:
    """A head-CT grid around the skull: size x size x Z, CT-like spacing, maybe a gantry tilt.

    Z is whatever covers the skull from below the maxilla to above the vertex (plus a margin),
    so it varies between cases with the skull's size, the slice spacing and the tilt.
    ``spacing_mm``: (in-plane, in-plane, slice) instead of random ones (e.g. a multiple of a model's spacing).
    """
    if spacing_mm is None:
        spacing_xy = rng.uniform(0.43, 0.50) * 512 / size
        spacing_z = rng.uniform(0.5, 1.25) * 512 / size
    else:
        spacing_xy, spacing_z = float(spacing_mm[0]), float(spacing_mm[2])
    tilt = np.deg2rad(rng.uniform(5.0, 20.0)) if rng.random() < 1 / 3 else 0.0
    direction = np.array([[1, 0, 0], [0, np.cos(tilt), np.sin(tilt)], [0, -np.sin(tilt), np.cos(tilt)]])
    spacing = np.array([spacing_xy, spacing_xy, spacing_z])
    # the skull's bounding box (skull frame), its corners in grid index units around the centre
    lo = np.array([-shape.half_width, -shape.half_length, -(shape.base_depth + 64.0 * shape.face_scale)]) * 1.08
    hi = np.array([shape.half_width, shape.half_length, shape.height]) * 1.08
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T
    rel = (shape.rotation @ corners.T).T @ np.linalg.inv(direction).T / spacing
    margin = 6.0 / spacing_z
    nz = int(np.ceil(rel[:, 2].max() - rel[:, 2].min() + 2 * margin))
    # head centre: in the middle left-right, a little anterior so that the table shows below
    centre_ijk = np.array([(size - 1) / 2, (size - 1) / 2 - 12.0 / spacing_xy, margin - rel[:, 2].min()])
    origin = shape.centre_lps - direction @ (spacing * centre_ijk)
    return Volume(np.zeros((size, size, nz), dtype=bool), tuple(spacing), tuple(origin), direction)


@dataclass(frozen=True)
class SyntheticSkull:
    """A generated complete skull: its mask on a CT grid and the shape it was drawn from."""

    mask: Volume
    shape: SkullShape
    seed: int


def generate_skull(seed: int, size: int = 512, grid: Volume | None = None, spacing_mm=None) -> SyntheticSkull:
    """The complete skull for ``seed`` on a ``size`` x ``size`` x Z grid (or on ``grid``); ``spacing_mm``: the
    grid's spacing instead of a random one."""
    rng = np.random.default_rng(seed)
    max_half = 0.5 * 0.43 * 512 - 12.0
    shape = random_shape(rng, max_half_length=max_half)
    grid_rng = np.random.default_rng([seed, 1])
    grid = grid if grid is not None else random_grid(grid_rng, shape, size, spacing_mm)
    factor = max(1, min(4, size // 64))
    mask = shapes.rasterize(skull_sdf(shape), grid, factor=factor)
    return SyntheticSkull(grid.with_array(mask), shape, seed)
