"""Craniotomy-like defects of the SkullBreak classes, cut from any complete skull mask.

A defect is a cone from the centre of the braincase through the vault: its cross-section on the
sphere of directions is a superellipse with a wavy rim (several lobes for ``random_2``), so it cuts
through the full thickness of the bone with radial edges, as a surgeon's saw does. The classes
follow SkullBreak (Kodym et al. 2021): ``bilateral`` (across the midline, on top), ``frontoorbital``
(frontal bone down to the orbital rim), ``parietotemporal`` (the side of the head), and
``random_1`` / ``random_2`` (anywhere on the vault, one or several lobes). Works in patient
millimetres, so it cuts the same physical defect on grids of any resolution, tilt or spacing.
The implant is exactly ``complete AND region`` and the defective skull ``complete AND NOT region``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparseskull.data.anatomy import braincase_centre
from sparseskull.data.volume import Volume

DEFECT_CLASSES = ("bilateral", "frontoorbital", "parietotemporal", "random_1", "random_2")

# LPS: +x patient left, +y posterior, +z superior
_ANTERIOR, _SUPERIOR = np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class Lobe:
    """One cone: its axis, the tangent direction of its first half-size, half-sizes (tan of half-angles), rim waves."""

    axis: np.ndarray
    tangent: np.ndarray
    half_tan: tuple[float, float]
    power: float
    waves: np.ndarray  # (K, 3): harmonic order, amplitude, phase


@dataclass(frozen=True)
class DefectShape:
    defect_class: str
    centre_lps: np.ndarray
    lobes: tuple[Lobe, ...]

    def contains(self, lps: np.ndarray) -> np.ndarray:
        """Which points (N x 3, LPS mm) lie inside the defect cone(s)."""
        rel = np.asarray(lps, dtype=np.float64) - self.centre_lps
        inside = np.zeros(len(rel), dtype=bool)
        for lobe in self.lobes:
            e1 = lobe.tangent
            e2 = np.cross(lobe.axis, e1)
            along = rel @ lobe.axis
            # outside the cone's widest angle (rim waves included): not worth the projection
            widest = np.arctan(max(lobe.half_tan) * (1.0 + np.abs(lobe.waves[:, 1]).sum()) * 2 ** 0.5)
            ahead = along > np.cos(widest) * np.linalg.norm(rel, axis=1) + 1e-6
            u = (rel[ahead] @ e1) / along[ahead] / lobe.half_tan[0]
            v = (rel[ahead] @ e2) / along[ahead] / lobe.half_tan[1]
            theta = np.arctan2(v, u)
            rim = 1.0 + sum(a * np.cos(k * theta + ph) for k, a, ph in lobe.waves)
            norm = (np.abs(u) ** lobe.power + np.abs(v) ** lobe.power) ** (1.0 / lobe.power)
            hit = np.zeros(len(rel), dtype=bool)
            hit[ahead] = norm < rim
            inside |= hit
        return inside


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Azimuth 0 = anterior, 90 = patient left; elevation 90 = superior (LPS vector)."""
    az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    return np.cos(el) * (np.cos(az) * _ANTERIOR + np.sin(az) * np.array([1.0, 0.0, 0.0])) + np.sin(el) * _SUPERIOR


def _tangent(axis: np.ndarray, towards: np.ndarray) -> np.ndarray:
    t = towards - (towards @ axis) * axis
    if np.linalg.norm(t) < 1e-6:
        t = _ANTERIOR - (_ANTERIOR @ axis) * axis
    return _unit(t)


def _lobe(rng, axis, first_dir, half_deg, power, wave_amp) -> Lobe:
    axis = _unit(axis)
    orders = np.arange(2, 6)
    waves = np.column_stack([orders, rng.uniform(0, wave_amp, len(orders)) / orders, rng.uniform(0, 2 * np.pi, len(orders))])
    half_tan = tuple(float(np.tan(np.deg2rad(h))) for h in half_deg)
    return Lobe(axis, _tangent(axis, np.asarray(first_dir, dtype=np.float64)), half_tan, float(power), waves)


def random_defect_shape(defect_class: str, centre_lps, rng: np.random.Generator) -> DefectShape:
    """Draw a defect of ``defect_class`` around the braincase centre ``centre_lps`` (LPS mm)."""
    if defect_class not in DEFECT_CLASSES:
        raise ValueError(f"unknown defect class {defect_class!r}; choose from {', '.join(DEFECT_CLASSES)}")
    side = rng.choice([-1.0, 1.0])
    left = np.array([1.0, 0.0, 0.0])
    if defect_class == "bilateral":
        axis = _direction(rng.uniform(-10, 10), rng.uniform(50, 75))
        lobes = [_lobe(rng, axis, left, (rng.uniform(45, 58), rng.uniform(22, 32)), rng.uniform(2.5, 4), 0.12)]
    elif defect_class == "frontoorbital":
        axis = _direction(side * rng.uniform(10, 35), rng.uniform(2, 14))
        lobes = [_lobe(rng, axis, left, (rng.uniform(24, 34), rng.uniform(22, 30)), rng.uniform(2.2, 3.5), 0.12)]
    elif defect_class == "parietotemporal":
        axis = _direction(side * rng.uniform(75, 105), rng.uniform(10, 35))
        lobes = [_lobe(rng, axis, _ANTERIOR, (rng.uniform(30, 42), rng.uniform(24, 34)), rng.uniform(2.2, 3.5), 0.12)]
    else:
        axis = _direction(rng.uniform(-180, 180), rng.uniform(15, 70))
        count = 1 if defect_class == "random_1" else int(rng.integers(2, 4))
        lobes = []
        for i in range(count):
            jitter = axis if i == 0 else _unit(axis + rng.normal(0, 0.22, 3))
            size = (rng.uniform(16, 34), rng.uniform(14, 30)) if count > 1 else (rng.uniform(22, 40), rng.uniform(18, 34))
            lobes.append(_lobe(rng, jitter, rng.normal(size=3), size, rng.uniform(1.6, 3.0), 0.35))
    return DefectShape(defect_class, np.asarray(centre_lps, dtype=np.float64), tuple(lobes))


@dataclass(frozen=True)
class Defect:
    defect_class: str
    defective: Volume
    implant: Volume
    shape: DefectShape


@dataclass(frozen=True)
class BonePoints:
    """The bone voxels of a skull and their LPS positions, computed once for many cuts."""

    skull: Volume
    ijk: np.ndarray
    lps: np.ndarray

    @classmethod
    def of(cls, skull: Volume) -> "BonePoints":
        ijk = np.argwhere(np.asarray(skull.array, dtype=bool))
        if len(ijk) == 0:
            raise ValueError("the skull mask is empty: there is no bone to cut a defect from")
        return cls(skull, ijk, skull.index_to_lps(ijk))


def cut(complete: Volume | BonePoints, shape: DefectShape) -> Defect:
    """Cut ``shape`` out of a complete skull: implant = complete AND region, exactly."""
    points = complete if isinstance(complete, BonePoints) else BonePoints.of(complete)
    bone = np.asarray(points.skull.array, dtype=bool)
    implant = np.zeros_like(bone)
    implant[tuple(points.ijk[shape.contains(points.lps)].T)] = True
    skull = points.skull
    return Defect(shape.defect_class, skull.with_array(bone & ~implant), skull.with_array(implant), shape)


def cut_random_defect(
    complete: Volume | BonePoints,
    defect_class: str,
    rng: np.random.Generator,
    centre_lps=None,
    min_fraction: float = 0.02,
    max_fraction: float = 0.25,
    tries: int = 20,
) -> Defect:
    """A random defect of ``defect_class`` whose implant holds a plausible share of the bone."""
    points = complete if isinstance(complete, BonePoints) else BonePoints.of(complete)
    centre = braincase_centre(points.skull) if centre_lps is None else np.asarray(centre_lps, dtype=np.float64)
    total = len(points.ijk)
    best = None
    for _ in range(tries):
        defect = cut(points, random_defect_shape(defect_class, centre, rng))
        fraction = np.count_nonzero(defect.implant.array) / total
        if min_fraction <= fraction <= max_fraction:
            return defect
        if best is None or abs(fraction - 0.08) < abs(best[0] - 0.08):
            best = (fraction, defect)
    return best[1]
