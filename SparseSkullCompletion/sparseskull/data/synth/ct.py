"""A head CT in Hounsfield units synthesised from a skull mask (generated or real).

Soft-tissue anatomy is laid out on a coarse (~2 mm) grid from the skull itself: the cranial
cavity (per-slice filled, closed bone) holds brain with a rim of CSF; scalp and facial soft
tissue wrap the bone; a head holder and the CT table lie behind the head (posterior, as for a
supine patient). Bone is drawn at full resolution: dense inner and outer tables (1200-1800 HU)
around a softer diploe (700-900 HU). Then partial-volume blur and noise, and int16 HU out.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sparseskull.data.resample import block_max
from sparseskull.data.volume import Volume

AIR_HU = -1000.0
# label: (mean HU, spatial variation HU)
_TISSUES = {
    1: (40.0, 8.0),  # scalp and facial soft tissue
    2: (32.0, 5.0),  # brain
    3: (8.0, 3.0),  # CSF between brain and bone
    4: (-60.0, 20.0),  # foam pad / head holder shell
    5: (550.0, 80.0),  # table (dense enough to pass a bone threshold: must be removed by connectivity)
}


def _ball(radius_vox) -> np.ndarray:
    r = np.asarray(radius_vox, dtype=float)
    g = np.ogrid[tuple(slice(-int(np.ceil(x)), int(np.ceil(x)) + 1) for x in r)]
    return sum((gi / max(ri, 1e-6)) ** 2 for gi, ri in zip(g, r)) <= 1.0


def _upsample(field: np.ndarray, shape) -> np.ndarray:
    """Trilinear upsampling of a coarse float field to ``shape`` (torch does it fast, multi-threaded)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)
    return out[0, 0].numpy()


def _smooth_noise(rng, shape, sigma) -> np.ndarray:
    return ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma) * (2.0 * sigma) ** 1.5


def _labels(skull: Volume, factors, rng) -> np.ndarray:
    """Coarse tissue labels (see _TISSUES; 0 = air) laid out around the skull ``skull``."""
    bone = block_max(np.asarray(skull.array, dtype=bool), factors)
    coarse_mm = np.asarray(skull.spacing_mm) * np.asarray(factors)
    closed = ndimage.binary_closing(bone, _ball(6.0 / coarse_mm), iterations=1) | bone
    cavity = np.zeros_like(bone)
    for k in range(bone.shape[2]):
        cavity[:, :, k] = ndimage.binary_fill_holes(closed[:, :, k])
    cavity &= ~bone
    near_bone = ndimage.binary_dilation(bone, _ball(2.0 / coarse_mm))
    head = ndimage.binary_dilation(cavity | bone, _ball(rng.uniform(5.0, 8.0) / coarse_mm))
    labels = np.zeros(bone.shape, dtype=np.uint8)
    labels[head] = 1
    labels[cavity] = 3
    labels[cavity & ~near_bone] = 2

    # head holder (a padded cradle) and table behind the head: +y is posterior in LPS
    idx = np.indices(bone.shape).reshape(3, -1).T
    centres = idx * np.asarray(factors) + (np.asarray(factors) - 1) / 2.0
    lps = skull.index_to_lps(centres).reshape(*bone.shape, 3)
    head_lps = lps[head]
    if len(head_lps) == 0:
        return labels
    back = head_lps[:, 1].max()
    mid_x = 0.5 * (head_lps[:, 0].min() + head_lps[:, 0].max())
    mid_y = 0.5 * (head_lps[:, 1].min() + back)
    radius = np.hypot(lps[..., 0] - mid_x, lps[..., 1] - mid_y)
    r_back = back - mid_y
    cradle = (radius > r_back + 2.0) & (radius < r_back + 12.0) & (lps[..., 1] > mid_y + 0.35 * r_back)
    labels[cradle & (labels == 0)] = 4
    gap = rng.uniform(16.0, 24.0)
    table = (lps[..., 1] > back + gap) & (lps[..., 1] < back + gap + rng.uniform(8.0, 12.0)) & (np.abs(lps[..., 0] - mid_x) < 160.0)
    labels[table] = 5
    return labels


def synthesize_ct(skull: Volume, seed: int = 0, noise_hu: float | None = None, envelope: Volume | None = None) -> Volume:
    """A CT (int16 HU, same grid as ``skull``) whose bone is the mask, with soft tissue, table and noise.

    ``envelope``: the skull whose shape lays out brain and scalp, when it differs from the bone
    drawn (a defective skull's brain and scalp follow its complete skull: the defect is covered
    by soft tissue, as after a craniectomy). Defaults to ``skull`` itself.
    """
    rng = np.random.default_rng([seed, 7])
    bone = np.asarray(skull.array, dtype=bool)
    if not bone.any():
        raise ValueError("the skull mask is empty: a CT cannot be synthesised from no bone")
    if envelope is not None and not envelope.same_grid(skull):
        raise ValueError("the envelope skull must lie on the same grid as the bone mask")
    spacing = np.asarray(skull.spacing_mm)
    factors = tuple(int(max(1, round(2.0 / s))) for s in spacing)
    labels = _labels(envelope if envelope is not None else skull, factors, rng)

    coarse_hu = np.full(labels.shape, AIR_HU, dtype=np.float32)
    for label, (mean, spread) in _TISSUES.items():
        sel = labels == label
        coarse_hu[sel] = mean + spread * np.clip(_smooth_noise(rng, labels.shape, 3.0)[sel], -2, 2)
    coarse_hu = ndimage.gaussian_filter(coarse_hu, 0.6)
    padded = tuple(n * f for n, f in zip(labels.shape, factors))
    hu = _upsample(coarse_hu, padded)[: bone.shape[0], : bone.shape[1], : bone.shape[2]]

    # bone: tables of about 1.5 mm around the diploe, dense cortical values varying in space
    table_vox = [max(1, int(round(1.5 / s))) for s in spacing]
    diploe = ndimage.minimum_filter(bone, size=[2 * t + 1 for t in table_vox])
    cortical = rng.uniform(1300.0, 1650.0)
    variation = _smooth_noise(rng, labels.shape, 2.0)  # coarse: looked up per bone voxel
    ijk = np.nonzero(bone)
    in_diploe = diploe[ijk]
    local = variation[tuple(i // f for i, f in zip(ijk, factors))]
    hu[ijk] = np.where(
        in_diploe,
        np.clip(rng.uniform(750.0, 850.0) + 50.0 * local, 700.0, 900.0),
        np.clip(cortical + 120.0 * local, 1200.0, 1800.0),
    )

    # partial-volume blur where bone edges are (the soft tissue is already smooth)
    margin = 4
    lo = np.maximum(np.min(ijk, axis=1) - margin, 0)
    hi = np.minimum(np.max(ijk, axis=1) + margin + 1, bone.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    hu[box] = ndimage.gaussian_filter(hu[box], sigma=0.6 * spacing.min() / spacing, truncate=3.0)
    sigma = rng.uniform(10.0, 20.0) if noise_hu is None else noise_hu
    body = hu > -900.0
    hu[body] += sigma * rng.standard_normal(int(body.sum()), dtype=np.float32)
    ct = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return skull.with_array(ct)
