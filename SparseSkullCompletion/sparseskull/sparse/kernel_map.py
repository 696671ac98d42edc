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

from sparseskull.sparse.tensor import CoordinateSet, pack, unpack


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
    nbr: torch.Tensor  # (N_out, K) int64, N_in where absent
    rev: torch.Tensor  # (N_in, K) int64, N_out where absent
    n_in: int
    n_out: int

    @property
    def pairs(self) -> int:
        return int((self.nbr < self.n_in).sum())


def _build(source: CoordinateSet, target: CoordinateSet, kernel_size: int, step: int, sign: int) -> KernelMap:
    """Map where output n reads input at target[n] + sign * offset * step."""
    offsets = kernel_offsets(kernel_size, source.device) * (sign * step)
    out = target.coords.to(torch.int64)
    n_in, n_out, k = len(source), len(target), len(offsets)
    query = out[:, None, :].expand(n_out, k, 4).clone()
    query[:, :, 1:] += offsets[None]
    nbr = source.lookup(pack(query.reshape(-1, 4))).reshape(n_out, k) if n_out else torch.zeros(0, k, dtype=torch.int64, device=source.device)
    rev = torch.full((n_in + 1, k), n_out, dtype=torch.int64, device=source.device)
    cols = torch.arange(k, device=source.device).expand(n_out, k)
    rows = torch.arange(n_out, device=source.device)[:, None].expand(n_out, k)
    rev[nbr, cols] = rows  # nbr is injective per column; the pad row n_in absorbs the misses
    return KernelMap(nbr, rev[:n_in].contiguous(), n_in, n_out)


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


__all__ = ["KernelMap", "cached_map", "downsample_coords", "expand_coords", "kernel_offsets", "minkowski_order", "unpack"]
