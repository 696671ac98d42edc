"""Overlap metrics for skull and implant masks (pure functions, explicit rules for empty masks)."""

from __future__ import annotations

import numpy as np


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
