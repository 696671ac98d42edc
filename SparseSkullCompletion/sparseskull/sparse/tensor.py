"""The sparse tensor value: integer coordinates with a batch index, features, and a tensor stride.

Conventions (those of MinkowskiEngine, so that weights and results carry over):
- ``coords`` is an int32 tensor (N, 4) of (batch, x, y, z) in voxel units of the finest grid;
  at tensor stride ``s`` every spatial coordinate is a multiple of ``s``.
- Coordinates are kept unique and sorted by (batch, x, y, z): every operation's output is in a
  canonical order, which makes results deterministic and lookups a binary search.
- The kernel maps between coordinate sets are cached on the :class:`CoordinateSet` that owns them,
  so they are shared by every layer at that level and freed with it (no global state).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

AXIS_BITS = 18
"""Bits per packed spatial axis: coordinates must lie in [-2**17, 2**17)."""
BATCH_BITS = 63 - 3 * AXIS_BITS
_HALF = 1 << (AXIS_BITS - 1)
_AXIS_MASK = (1 << AXIS_BITS) - 1


def pack(coords: torch.Tensor) -> torch.Tensor:
    """(N, 4) int (batch, x, y, z) -> (N,) int64 keys whose order is (batch, x, y, z) lexicographic."""
    c = coords.to(torch.int64)
    if len(c):
        lo, hi = int(c[:, 1:].min()), int(c[:, 1:].max())
        if lo < -_HALF or hi >= _HALF:
            raise ValueError(f"sparse coordinates must lie in [{-_HALF}, {_HALF}); got [{lo}, {hi}]")
        b_lo, b_hi = int(c[:, 0].min()), int(c[:, 0].max())
        if b_lo < 0 or b_hi >= 1 << BATCH_BITS:
            raise ValueError(f"batch indices must lie in [0, {1 << BATCH_BITS}); got [{b_lo}, {b_hi}]")
    shifted = c[:, 1:] + _HALF
    return (((c[:, 0] << AXIS_BITS | shifted[:, 0]) << AXIS_BITS | shifted[:, 1]) << AXIS_BITS) | shifted[:, 2]


def unpack(keys: torch.Tensor, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Inverse of :func:`pack`: (N,) int64 keys -> (N, 4) coordinates (int32, or ``dtype``)."""
    z = (keys & _AXIS_MASK) - _HALF
    y = ((keys >> AXIS_BITS) & _AXIS_MASK) - _HALF
    x = ((keys >> (2 * AXIS_BITS)) & _AXIS_MASK) - _HALF
    b = keys >> (3 * AXIS_BITS)
    return torch.stack([b, x, y, z], dim=1).to(dtype)


def key_deltas(offsets: torch.Tensor) -> torch.Tensor:
    """(K, 3) spatial offsets -> (K,) int64 amounts that move a packed key by each offset (valid while
    every axis stays in range, which the +-2**17 bounds leave room for on any CT grid)."""
    o = offsets.to(torch.int64)
    return o[:, 0] * (1 << 2 * AXIS_BITS) + o[:, 1] * (1 << AXIS_BITS) + o[:, 2]


def floor_keys(keys: torch.Tensor, step: int) -> torch.Tensor:
    """Keys of the coordinates floored to multiples of ``step`` (a power of two), computed on the keys:
    the axes are stored offset by 2**17, a multiple of ``step``, so flooring clears their low bits."""
    if step & (step - 1) or not 0 < step <= _HALF:
        raise ValueError(f"step must be a power of two up to {_HALF}; got {step}")
    low = step - 1
    return keys & ~((low << 2 * AXIS_BITS) | (low << AXIS_BITS) | low)


@dataclass(frozen=True, eq=False)
class CoordinateSet:
    """Sorted unique coordinates at one tensor stride, with the kernel maps computed from them."""

    keys: torch.Tensor  # (N,) int64, strictly increasing
    stride: int
    maps: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_coords(cls, coords: torch.Tensor, stride: int = 1) -> tuple["CoordinateSet", torch.Tensor]:
        """Sort and deduplicate; returns the set and, for each input row, its row in the set."""
        coords = torch.as_tensor(coords)
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise ValueError(f"coordinates must be (N, 4) = (batch, x, y, z); got shape {tuple(coords.shape)}")
        if coords.dtype.is_floating_point:
            raise ValueError("coordinates must be integers")
        if stride < 1:
            raise ValueError(f"tensor stride must be >= 1, got {stride}")
        if stride > 1 and len(coords) and bool((coords[:, 1:] % stride != 0).any()):
            raise ValueError(f"at tensor stride {stride} every coordinate must be a multiple of {stride}")
        keys, inverse = torch.unique(pack(coords), sorted=True, return_inverse=True)
        return cls(keys, int(stride)), inverse

    @property
    def coords(self) -> torch.Tensor:
        return unpack(self.keys)

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def __len__(self) -> int:
        return int(self.keys.numel())

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Row of each key in this set, or len(self) where the key is absent (vectorised binary search)."""
        n = len(self)
        if n == 0:
            return torch.full_like(keys, 0)
        pos = torch.searchsorted(self.keys, keys).clamp_(max=n - 1)
        found = self.keys[pos] == keys
        return torch.where(found, pos, torch.full_like(pos, n))

    def subset(self, keep: torch.Tensor) -> "CoordinateSet":
        return CoordinateSet(self.keys[keep], self.stride)


@dataclass(frozen=True, eq=False)
class SparseTensor:
    """Features on a coordinate set: ``feats[i]`` belongs to ``cset.coords[i]``."""

    feats: torch.Tensor
    cset: CoordinateSet

    def __post_init__(self) -> None:
        if self.feats.ndim != 2 or self.feats.shape[0] != len(self.cset):
            raise ValueError(f"features must be (N, C) with N = {len(self.cset)} points; got {tuple(self.feats.shape)}")

    @classmethod
    def from_coords(cls, coords: torch.Tensor, feats: torch.Tensor | None = None, stride: int = 1) -> "SparseTensor":
        """A tensor from (N, 4) coordinates; duplicate coordinates have their features summed."""
        coords = torch.as_tensor(coords)
        cset, inverse = CoordinateSet.from_coords(coords, stride)
        if feats is None:
            feats = torch.ones(len(coords), 1, device=coords.device)
        if feats.ndim == 1:
            feats = feats[:, None]
        if len(inverse) == len(cset) and bool((inverse == torch.arange(len(cset), device=inverse.device)).all()):
            return cls(feats, cset)
        merged = torch.zeros(len(cset), feats.shape[1], dtype=feats.dtype, device=feats.device).index_add_(0, inverse, feats)
        return cls(merged, cset)

    @classmethod
    def from_mask(cls, masks, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "SparseTensor":
        """Occupied voxels of one or more binary volumes (arrays or Volumes, [i, j, k]) as a batch, features 1."""
        if isinstance(masks, (np.ndarray, torch.Tensor)) or hasattr(masks, "array"):
            masks = [masks]
        rows = []
        for b, m in enumerate(masks):
            a = np.asarray(getattr(m, "array", m))
            if a.ndim != 3:
                raise ValueError(f"mask {b} is {a.ndim}D; masks must be 3D")
            ijk = np.argwhere(a)
            rows.append(np.concatenate([np.full((len(ijk), 1), b, dtype=np.int64), ijk], axis=1))
        coords = torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, 4), np.int64)).to(device)
        return cls.from_coords(coords, torch.ones(len(coords), 1, device=device, dtype=dtype))

    @classmethod
    def from_dense(cls, dense: torch.Tensor, stride: int = 1) -> "SparseTensor":
        """(B, C, X, Y, Z) -> the voxels where any channel is non-zero (coordinates = index * stride)."""
        occupied = (dense != 0).any(dim=1)
        idx = occupied.nonzero()
        feats = dense.permute(0, 2, 3, 4, 1)[occupied]
        coords = torch.cat([idx[:, :1], idx[:, 1:] * stride], dim=1)
        return cls.from_coords(coords, feats, stride)

    @property
    def coords(self) -> torch.Tensor:
        return self.cset.coords

    @property
    def stride(self) -> int:
        return self.cset.stride

    @property
    def C(self) -> torch.Tensor:  # noqa: N802 - MinkowskiEngine's name
        return self.coords

    @property
    def F(self) -> torch.Tensor:  # noqa: N802 - MinkowskiEngine's name
        return self.feats

    def __len__(self) -> int:
        return len(self.cset)

    def replace(self, feats: torch.Tensor) -> "SparseTensor":
        """Other features on the same coordinates (shares the cached kernel maps)."""
        return SparseTensor(feats, self.cset)

    def to_dense(self, shape: tuple[int, int, int] | None = None, origin=(0, 0, 0), batch_size: int | None = None) -> torch.Tensor:
        """(B, C, X, Y, Z) grid; voxel v holds the point at origin + v * stride."""
        c = self.coords.to(torch.int64)
        origin_t = torch.as_tensor(origin, dtype=torch.int64, device=c.device)
        rel = c[:, 1:] - origin_t
        if bool((rel % self.stride != 0).any()):
            raise ValueError(f"origin {tuple(origin)} is not on the stride-{self.stride} grid of the points")
        rel = torch.div(rel, self.stride, rounding_mode="floor")
        if shape is None:
            shape = tuple(int(v) + 1 for v in rel.max(dim=0).values) if len(rel) else (1, 1, 1)
        if len(rel) and (bool((rel < 0).any()) or any(int(rel[:, i].max()) >= shape[i] for i in range(3))):
            raise ValueError(f"points fall outside the dense grid {tuple(shape)} at origin {tuple(origin)}")
        b = batch_size if batch_size is not None else (int(c[:, 0].max()) + 1 if len(c) else 1)
        out = torch.zeros(b, self.feats.shape[1], *shape, dtype=self.feats.dtype, device=self.feats.device)
        out[c[:, 0], :, rel[:, 0], rel[:, 1], rel[:, 2]] = self.feats
        return out
