"""Kernel offsets and kernel maps (neighbour tables), built with vectorised torch ops.

A kernel map between an input and an output coordinate set is stored as a neighbour table
``nbr`` of shape (N_out, K): ``nbr[n, k]`` is the input row feeding output ``n`` through kernel
offset ``k``, or N_in where there is none (a zero row is appended to the features). Its reverse
``rev`` (N_in, K) drives the backward pass as a gather too, so no scatter-add is needed and the
results are deterministic on every device.

Offsets follow MinkowskiEngine: odd kernels are centred (-(k//2) .. k//2), even kernels start at 0
(0 .. k-1). Our canonical weight order is the dense ``conv3d`` one: offset index = (x*k + y)*k + z.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from sparseskull.sparse.tensor import CoordinateSet, pack


def kernel_offsets(kernel_size: int, device=None) -> torch.Tensor:
    """(k^3, 3) int64 offsets in canonical order (z fastest), in units of the kernel's step."""
    if kernel_size < 1:
        raise ValueError(f"kernel size must be >= 1, got {kernel_size}")
    start = -(kernel_size // 2) if kernel_size % 2 else 0
    r = torch.arange(start, start + kernel_size, device=device)
    return torch.cartesian_prod(r, r, r).reshape(-1, 3)


def minkowski_order(kernel_size: int) -> torch.Tensor:
    """For each MinkowskiEngine kernel index, our canonical index (ME runs x fastest, we run z fastest)."""
    k = kernel_size
    idx = torch.arange(k**3)
    x, y, z = idx % k, (idx // k) % k, idx // (k * k)  # ME: index = x + k*y + k*k*z
    return (x * k + y) * k + z


@dataclass(frozen=True, eq=False)
class KernelMap:
    nbr: torch.Tensor  # (N_out, K) int32 (int64 for huge sets), N_in where absent
    rev: torch.Tensor  # (N_in, K), N_out where absent
    n_in: int
    n_out: int

    @property
    def pairs(self) -> int:
        return int((self.nbr < self.n_in).sum())


DENSE_CELLS_PER_POINT = 64
DENSE_MIN_CELLS = 1 << 22
"""A dense index grid serves the lookups when it has at most this many cells per point (plus the minimum)."""


def _dot(ijk: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Flat index of integer (N, 3) rows (no integer matmul: CUDA has none)."""
    return ijk[:, 0] * strides[0] + ijk[:, 1] * strides[1] + ijk[:, 2] * strides[2]


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _neighbours(source: CoordinateSet, target: CoordinateSet, offsets: torch.Tensor) -> torch.Tensor:
    """(N_out, K): row of source at target + offsets[k] (voxel units), or N_in where absent."""
    n_in, n_out, k = len(source), len(target), len(offsets)
    dev = source.device
    if n_in == 0 or n_out == 0:
        return torch.full((n_out, k), n_in, dtype=torch.int64, device=dev)
    s = source.stride
    src, out = source.coords.to(torch.int64), target.coords.to(torch.int64)
    reach = int(offsets.abs().max())
    # the table spans the source grid over every point a query can reach
    lo_src = src[:, 1:].min(dim=0).values
    lo = lo_src - _ceil_div(lo_src - torch.minimum(lo_src, out[:, 1:].min(dim=0).values - reach), s) * s
    hi = torch.maximum(src[:, 1:].max(dim=0).values, out[:, 1:].max(dim=0).values + reach)
    dims = torch.div(hi - lo, s, rounding_mode="floor") + 1
    batches = max(int(src[-1, 0]), int(out[-1, 0])) + 1
    cells = batches * int(dims.prod())
    if cells > DENSE_CELLS_PER_POINT * max(n_in, n_out) + DENSE_MIN_CELLS:
        query = out[:, None, :].expand(n_out, k, 4).clone()
        query[:, :, 1:] += offsets[None]
        return source.lookup(pack(query.reshape(-1, 4))).reshape(n_out, k)
    strides = torch.tensor([int(dims[1] * dims[2]), int(dims[2]), 1], device=dev)
    table = torch.full((cells,), n_in, dtype=torch.int32 if n_in < 2**31 - 1 else torch.int64, device=dev)
    volume = int(dims.prod())
    table[src[:, 0] * volume + _dot(torch.div(src[:, 1:] - lo, s, rounding_mode="floor"), strides)] = torch.arange(
        n_in, dtype=table.dtype, device=dev
    )
    rel = out[:, 1:] - lo
    base = out[:, 0] * volume
    aligned = bool((offsets % s == 0).all()) and bool((rel % s == 0).all())
    if aligned:  # every query lands on the source grid: one gather for all offsets
        flat = base + _dot(torch.div(rel, s, rounding_mode="floor"), strides)
        deltas = _dot(torch.div(offsets, s, rounding_mode="floor"), strides)
        nbr = table[flat[:, None] + deltas[None, :]].to(torch.int64)
    else:  # generative maps: queries off the source grid have no neighbour
        q = rel[:, None, :] + offsets[None]  # (N_out, K, 3)
        on_grid = (q % s == 0).all(dim=2)
        q = torch.div(q, s, rounding_mode="floor")
        flat = base[:, None] + q[..., 0] * strides[0] + q[..., 1] * strides[1] + q[..., 2]
        nbr = torch.where(on_grid, table[flat].to(torch.int64), torch.full_like(flat, n_in))
    return nbr


def _build(source: CoordinateSet, target: CoordinateSet, kernel_size: int, step: int, sign: int) -> KernelMap:
    """Map where output n reads input at target[n] + sign * offset * step."""
    offsets = kernel_offsets(kernel_size, source.device) * (sign * step)
    n_in, n_out, k = len(source), len(target), len(offsets)
    nbr = _neighbours(source, target, offsets)
    index = torch.int32 if max(n_in, n_out) < 2**31 - 1 else torch.int64  # halves the maps' memory
    rev = torch.full((n_in + 1, k), n_out, dtype=index, device=source.device)
    cols = torch.arange(k, device=source.device).expand(n_out, k)
    rows = torch.arange(n_out, dtype=index, device=source.device)[:, None].expand(n_out, k)
    rev[nbr, cols] = rows  # nbr is injective per column; the pad row n_in absorbs the misses
    return KernelMap(nbr.to(index), rev[:n_in].contiguous(), n_in, n_out)


def cached_map(source: CoordinateSet, target: CoordinateSet, kernel_size: int, step: int, sign: int) -> KernelMap:
    """The kernel map, cached on the output set: layers of one level share it, and it is freed with
    that level. The input set is held weakly, so a cache never keeps another level alive."""
    key = (id(source), kernel_size, step, sign)
    hit = target.maps.get(key)
    if hit is not None and hit[0]() is source:
        return hit[1]
    kmap = _build(source, target, kernel_size, step, sign)
    target.maps[key] = (weakref.ref(source), kmap)
    return kmap


def downsample_coords(cset: CoordinateSet, factor: int = 2) -> CoordinateSet:
    """The coordinate set at stride * factor covering ``cset`` (each point floored to the coarser grid)."""
    s = cset.stride * factor
    c = cset.coords.to(torch.int64)
    c[:, 1:] = torch.div(c[:, 1:], s, rounding_mode="floor") * s
    return CoordinateSet(torch.unique(pack(c), sorted=True), s)


def coarsen_to(cset: CoordinateSet, stride: int) -> CoordinateSet:
    """``cset`` brought to a coarser power-of-two ``stride`` (a point is occupied if any fine point falls in it)."""
    if stride < cset.stride:
        raise ValueError(f"the set (stride {cset.stride}) is coarser than stride {stride}")
    level = cset
    while level.stride < stride:
        level = downsample_coords(level, 2)
    if level.stride != stride:
        raise ValueError(f"strides {cset.stride} and {stride} are not powers of two apart")
    return level


def expand_coords(cset: CoordinateSet, kernel_size: int, factor: int = 2) -> CoordinateSet:
    """Every coordinate a generative transposed kernel reaches, at stride / factor."""
    if cset.stride % factor:
        raise ValueError(f"a stride-{cset.stride} tensor cannot be upsampled by {factor}")
    t = cset.stride // factor
    offsets = kernel_offsets(kernel_size, cset.device) * t
    c = cset.coords.to(torch.int64)
    grown = c[:, None, :].expand(len(c), len(offsets), 4).clone()
    grown[:, :, 1:] += offsets[None]
    return CoordinateSet(torch.unique(pack(grown.reshape(-1, 4)), sorted=True), t)


__all__ = ["KernelMap", "cached_map", "coarsen_to", "downsample_coords", "expand_coords", "kernel_offsets", "minkowski_order"]
