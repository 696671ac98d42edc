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

import torch

from sparseskull.sparse.tensor import CoordinateSet, floor_keys, key_deltas, pack, unpack


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


class KernelMap:
    """``nbr`` (N_out, K): the input row each output reads per offset (N_in where absent). ``rev``
    (N_in, K), the output each input feeds (N_out where absent), serves only the backward pass, so it is
    built on first use: inference never pays its time or its memory (half of the map)."""

    def __init__(self, nbr: torch.Tensor, n_in: int, n_out: int, symmetric: bool = False):
        self.nbr, self.n_in, self.n_out = nbr, n_in, n_out
        self.symmetric = symmetric  # one set to itself through offsets o and -o at columns k and K-1-k
        self._rev: torch.Tensor | None = None

    @property
    def rev(self) -> torch.Tensor:
        if self._rev is None:
            # input i feeds output n through offset k where n reads i through -offset: the map read backwards,
            # a column flip instead of a scatter of every pair (a tenth of a CPU training step at 128)
            self._rev = self.nbr.flip(1).contiguous() if self.symmetric else _reverse(self.nbr, self.n_in, self.n_out)
        return self._rev

    @property
    def pairs(self) -> int:
        return int((self.nbr < self.n_in).sum())


def _reverse(nbr: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    k = nbr.shape[1]
    rev = torch.full((n_in + 1, k), n_out, dtype=nbr.dtype, device=nbr.device)
    cols = torch.arange(k, device=nbr.device).expand(n_out, k)
    rows = torch.arange(n_out, dtype=nbr.dtype, device=nbr.device)[:, None].expand(n_out, k)
    rev[nbr.to(torch.int64), cols] = rows  # nbr is injective per column; the pad row n_in absorbs the misses
    return rev[:n_in].contiguous()


LOOKUP_ROWS = 1 << 18
"""Output rows per block of neighbour lookups."""


def row_blocks(n: int, size: int):
    """Slices of ``size`` rows covering ``range(n)``: blocks bound the temporaries of row-wise work."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))

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
    src = unpack(source.keys, torch.int64)
    out = src if target is source else unpack(target.keys, torch.int64)
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
    src_flat = src[:, 0] * volume + _dot(torch.div(src[:, 1:] - lo, s, rounding_mode="floor"), strides)
    table[src_flat] = torch.arange(n_in, dtype=table.dtype, device=dev)
    nbr = torch.empty((n_out, k), dtype=table.dtype, device=dev)
    offsets_on_grid = bool((offsets % s == 0).all())
    if out is src and offsets_on_grid:  # a stride-1 layer: the queries are the source's own cells
        rel, aligned = None, True
    else:
        rel = out[:, 1:] - lo
        aligned = offsets_on_grid and bool((rel % s == 0).all())
    if aligned:  # every query lands on the source grid: one gather per block of rows for all offsets
        flat = src_flat if rel is None else out[:, 0] * volume + _dot(torch.div(rel, s, rounding_mode="floor"), strides)
        deltas = _dot(torch.div(offsets, s, rounding_mode="floor"), strides)
        if cells < 2**31 - 1:  # int32 index arithmetic: half the memory traffic of the (rows, K) sums
            flat, deltas = flat.to(torch.int32), deltas.to(torch.int32)
        for rows in row_blocks(n_out, LOOKUP_ROWS):
            torch.index_select(table, 0, (flat[rows, None] + deltas[None, :]).reshape(-1), out=nbr[rows].view(-1))
    else:  # generative maps: queries off the source grid have no neighbour
        base = out[:, 0] * volume
        absent = torch.tensor(n_in, dtype=table.dtype, device=dev)
        for rows in row_blocks(n_out, LOOKUP_ROWS):
            q = rel[rows, None, :] + offsets[None]  # (rows, K, 3)
            on_grid = (q % s == 0).all(dim=2)
            q = torch.div(q, s, rounding_mode="floor")
            flat = base[rows, None] + q[..., 0] * strides[0] + q[..., 1] * strides[1] + q[..., 2]
            nbr[rows] = torch.where(on_grid, table[flat], absent)
    return nbr


def _build(source: CoordinateSet, target: CoordinateSet, kernel_size: int, step: int, sign: int) -> KernelMap:
    """Map where output n reads input at target[n] + sign * offset * step."""
    offsets = kernel_offsets(kernel_size, source.device) * (sign * step)
    n_in, n_out = len(source), len(target)
    nbr = _neighbours(source, target, offsets)
    index = torch.int32 if max(n_in, n_out) < 2**31 - 1 else torch.int64  # halves the maps' memory
    return KernelMap(nbr.to(index), n_in, n_out, symmetric=source is target and kernel_size % 2 == 1)


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
    if s & (s - 1) == 0:  # powers of two (the network's strides): on the packed keys, no unpacking
        return CoordinateSet(torch.unique(floor_keys(cset.keys, s), sorted=True), s)
    c = cset.coords.to(torch.int64)
    c[:, 1:] = torch.div(c[:, 1:], s, rounding_mode="floor") * s
    return CoordinateSet(torch.unique(pack(c), sorted=True), s)


def coarsen_to(cset: CoordinateSet, stride: int) -> CoordinateSet:
    """``cset`` brought to a coarser power-of-two ``stride`` (a point is occupied if any fine point falls in it)."""
    if stride < cset.stride:
        raise ValueError(f"the set (stride {cset.stride}) is coarser than stride {stride}")
    level = cset
    while level.stride < stride:  # each coarser copy is kept on the set it came from: a target serves every level
        cached = level.maps.get(("coarser", 2))
        if cached is None:
            cached = level.maps[("coarser", 2)] = downsample_coords(level, 2)
        level = cached
    if level.stride != stride:
        raise ValueError(f"strides {cset.stride} and {stride} are not powers of two apart")
    return level


def expand_coords(cset: CoordinateSet, kernel_size: int, factor: int = 2) -> CoordinateSet:
    """Every coordinate a generative transposed kernel reaches, at stride / factor."""
    if cset.stride % factor:
        raise ValueError(f"a stride-{cset.stride} tensor cannot be upsampled by {factor}")
    t = cset.stride // factor
    deltas = key_deltas(kernel_offsets(kernel_size, cset.device) * t)  # the offsets added on the packed keys
    return CoordinateSet(torch.unique((cset.keys[:, None] + deltas[None, :]).reshape(-1), sorted=True), t)


def expand_pairs(cset: CoordinateSet) -> tuple[CoordinateSet, torch.Tensor]:
    """The kernel-2 expansion of a stride-s set to stride s/2, and ``rows`` (N, 8): the output row of each
    (input point, offset). The expansion is one-to-one (an output's coordinate floored to s is its input),
    so sorting the candidates is the whole job: no deduplication, no lookups."""
    if cset.stride % 2:
        raise ValueError(f"a stride-{cset.stride} tensor cannot be upsampled by 2")
    t = cset.stride // 2
    deltas = key_deltas(kernel_offsets(2, cset.device) * t)
    candidates = (cset.keys[:, None] + deltas[None, :]).reshape(-1)
    order = torch.argsort(candidates)
    rows = torch.empty_like(order)
    rows[order] = torch.arange(len(order), device=order.device)
    return CoordinateSet(candidates[order], t), rows.view(len(cset), 8)


__all__ = ["KernelMap", "cached_map", "coarsen_to", "downsample_coords", "expand_coords", "expand_pairs", "kernel_offsets", "minkowski_order"]
