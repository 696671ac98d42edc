"""The spconv backend (spconv 2.x): its CUDA kernels, behind a self-check against the torch engine.

spconv's CPU path gives wrong answers with more than one thread (its scatter-add races) and has no
backward pass, so on CPU every spconv call runs with one thread, gradients are refused with a
clear error, and before first use in a process the backend compares each operation with the
torch engine on random inputs: a mismatch raises, it never answers wrongly in silence.
Weights stay in our canonical layout and are permuted to spconv's (C_out, kx, ky, kz, C_in).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from sparseskull.sparse.functional import check_point_cap, merge_rows
from sparseskull.sparse.kernel_map import coarsen_to
from sparseskull.sparse.tensor import CoordinateSet, SparseTensor, pack, unpack

ALIGN = 64  # spatial shapes are padded to the network's total stride, so strided convs keep border points


def _spconv():
    try:
        import spconv.pytorch as spc
    except ImportError as exc:
        raise ImportError("the 'spconv' backend needs spconv 2.x: pip install spconv (CPU) or spconv-cu12x (CUDA)") from exc
    return spc


def available() -> bool:
    try:
        _spconv()
    except ImportError:
        return False
    return True


@dataclass(frozen=True, eq=False)
class SpconvTensor:
    """An spconv SparseConvTensor with what it lacks: our tensor stride and the coordinate origin."""

    t: object  # spconv.pytorch.SparseConvTensor, indices (b, i, j, k) = (coords - origin) / stride
    stride: int
    origin: tuple[int, int, int]

    @property
    def coords(self) -> torch.Tensor:
        c = self.t.indices.to(torch.int64).clone()
        c[:, 1:] = c[:, 1:] * self.stride + torch.tensor(self.origin, device=c.device)
        return c


@contextmanager
def _one_thread_on_cpu(device: torch.device):
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _shape(indices: torch.Tensor) -> list[int]:
    top = indices[:, 1:].max(dim=0).values + 1 if len(indices) else torch.ones(3, dtype=torch.int64)
    return [int(-(-int(n) // ALIGN) * ALIGN) for n in top]


def to_spconv(x: SparseTensor, check: bool = True) -> SpconvTensor:
    """Our tensor as an spconv tensor (after the backend's self-check on that device)."""
    spc = _spconv()
    if check:
        self_check(x.feats.device.type)
    c = x.coords.to(torch.int64)
    origin = (c[:, 1:].min(dim=0).values if len(c) else torch.zeros(3, dtype=torch.int64)).tolist()
    step = x.stride * ALIGN  # on the coarsest grid, so spconv's downsampling floors as ours does
    origin = [o - o % step for o in origin]
    idx = c.clone()
    idx[:, 1:] = torch.div(c[:, 1:] - torch.tensor(origin, device=c.device), x.stride, rounding_mode="floor")
    batch = int(c[:, 0].max()) + 1 if len(c) else 1
    t = spc.SparseConvTensor(x.feats, idx.to(torch.int32), _shape(idx), batch)
    return SpconvTensor(t, x.stride, tuple(int(o) for o in origin))


def from_spconv(y: SpconvTensor) -> SparseTensor:
    return SparseTensor.from_coords(y.coords, y.t.features, y.stride)


def features(x: SpconvTensor) -> torch.Tensor:
    return x.t.features


def with_features(x: SpconvTensor, feats: torch.Tensor) -> SpconvTensor:
    return SpconvTensor(x.t.replace_feature(feats), x.stride, x.origin)


def point_count(x: SpconvTensor) -> int:
    return int(x.t.features.shape[0])


def _weight(weight: torch.Tensor, k: int) -> torch.Tensor:
    return weight.reshape(k, k, k, weight.shape[1], weight.shape[2]).permute(4, 0, 1, 2, 3).contiguous()


def _run(module, x: SpconvTensor, weight, bias, kernel_size: int):
    if x.t.features.device.type == "cpu" and torch.is_grad_enabled() and (weight.requires_grad or x.t.features.requires_grad):
        raise RuntimeError("spconv has no backward pass on CPU: train with the torch backend, or run under torch.no_grad()")
    t = x.t
    if module.stride[0] == 2:  # keep every point's block inside the grid
        t = _spconv().SparseConvTensor(t.features, t.indices, [n + n % 2 for n in t.spatial_shape], t.batch_size)
    with _one_thread_on_cpu(t.features.device):
        y = module._conv_forward(
            False, t, _weight(weight, kernel_size), None, None, name=None, sparse_unique_name="",
            act_type=module.act_type, act_alpha=module.act_alpha, act_beta=module.act_beta,
        )
    return y if bias is None else y.replace_feature(y.features + bias)  # spconv's CPU path takes no bias


@functools.lru_cache(maxsize=None)
def _module(kind: str, c_in: int, c_out: int, kernel_size: int):
    spc = _spconv()
    if kind == "subm":
        return spc.SubMConv3d(c_in, c_out, kernel_size, bias=False)
    if kind == "down":
        return spc.SparseConv3d(c_in, c_out, kernel_size, stride=2, bias=False)
    return spc.SparseConvTranspose3d(c_in, c_out, kernel_size, stride=2, bias=False)


def conv(x: SpconvTensor, weight, bias=None, kernel_size: int = 3, stride: int = 1) -> SpconvTensor:
    c_in, c_out = weight.shape[1], weight.shape[2]
    if stride == 1:
        if kernel_size % 2 == 0:
            raise ValueError("spconv's submanifold convolution needs an odd kernel; use the torch backend")
        y = _run(_module("subm", c_in, c_out, kernel_size), x, weight, bias, kernel_size)
        return SpconvTensor(y, x.stride, x.origin)
    if stride != 2 or kernel_size != 2:
        raise ValueError("the spconv backend downsamples with kernel 2, stride 2 only (the paper's layers)")
    y = _run(_module("down", c_in, c_out, kernel_size), x, weight, bias, kernel_size)
    return SpconvTensor(y, 2 * x.stride, x.origin)


def generative_conv_transpose(x: SpconvTensor, weight, bias=None, kernel_size: int = 2, stride: int = 2, max_points=None, level: str = ""):
    if stride != 2 or x.stride % 2:
        raise ValueError(f"generative transposed convolution needs stride 2 and an even tensor stride; got {stride}, {x.stride}")
    y = _run(_module("up", weight.shape[1], weight.shape[2], kernel_size), x, weight, bias, kernel_size)
    check_point_cap(int(y.features.shape[0]), point_count(x), max_points, level)
    return SpconvTensor(y, x.stride // 2, x.origin)


def prune(x: SpconvTensor, keep: torch.Tensor) -> SpconvTensor:
    spc = _spconv()
    keep = keep.reshape(-1)
    t = spc.SparseConvTensor(x.t.features[keep], x.t.indices[keep], x.t.spatial_shape, x.t.batch_size)
    return SpconvTensor(t, x.stride, x.origin)


def union(a: SpconvTensor, b: SpconvTensor) -> SpconvTensor:
    """Points of either tensor, features summed where both have one (spconv has no such op: the keys are
    merged here, in the torch engine's canonical order). Both must come from one input (same origin)."""
    if a.stride != b.stride or a.origin != b.origin:
        raise ValueError(f"union needs one grid: strides {a.stride}, {b.stride}, origins {a.origin}, {b.origin}")
    fa, fb = a.t.features, b.t.features
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"union needs equal channel counts; got {fa.shape[1]} and {fb.shape[1]}")
    keys, feats = merge_rows(pack(a.t.indices), fa, pack(b.t.indices), fb)
    shape = [max(p, q) for p, q in zip(a.t.spatial_shape, b.t.spatial_shape)]
    t = _spconv().SparseConvTensor(feats, unpack(keys), shape, max(a.t.batch_size, b.t.batch_size))
    return SpconvTensor(t, a.stride, a.origin)


def target_mask(x: SpconvTensor, target: CoordinateSet) -> torch.Tensor:
    level = coarsen_to(target, x.stride)
    return level.lookup(pack(x.coords.to(level.device))) < len(level)


def _same(ref: SparseTensor, got: SparseTensor, atol: float) -> bool:
    return torch.equal(ref.coords, got.coords) and torch.allclose(ref.feats, got.feats, atol=atol, rtol=1e-4)


@functools.lru_cache(maxsize=None)
def self_check(device: str = "cpu", atol: float = 1e-4) -> bool:
    """Compare every spconv operation with the torch engine on random inputs; raise on any mismatch."""
    from sparseskull.sparse import functional as F

    g = torch.Generator().manual_seed(0)
    cases = [("subm", 3, 1, 1), ("down", 2, 2, 1), ("up", 4, 2, 2), ("up", 2, 2, 2)]
    with torch.no_grad():
        for kind, k, stride, in_stride in cases:
            idx = (torch.rand(2, 14, 11, 9, generator=g) < 0.25).nonzero()
            coords = torch.cat([idx[:, :1], (idx[:, 1:] + torch.tensor([37, -5, 3])) * in_stride], dim=1)  # off-origin
            x = SparseTensor.from_coords(coords.to(device), torch.randn(len(idx), 5, generator=g).to(device), in_stride)
            w = (torch.randn(k**3, 5, 6, generator=g) * 0.3).to(device)
            if kind == "up":
                ref = F.generative_conv_transpose(x, w, None, k, 2)
                got = from_spconv(generative_conv_transpose(to_spconv(x, check=False), w, None, k, 2))
            else:
                ref = F.conv(x, w, None, k, stride)
                got = from_spconv(conv(to_spconv(x, check=False), w, None, k, stride))
            if not _same(ref, got, atol):
                raise RuntimeError(
                    f"spconv self-check failed on {device} for {kind} (kernel {k}): it disagrees with the torch engine; "
                    "use the torch backend"
                )
            if kind == "subm":  # the skips' union: a pruned tensor with another on the same grid
                keep = (torch.rand(len(ref), generator=g) < 0.5).to(device)
                other = SparseTensor(torch.randn(len(ref), 6, generator=g).to(device), ref.cset)
                want = F.union(F.prune(ref, keep), other)
                have = from_spconv(union(prune(to_spconv(ref, check=False), keep), to_spconv(other, check=False)))
                if not _same(want, have, atol):
                    raise RuntimeError(f"spconv self-check failed on {device} for union: it disagrees with the torch engine; use the torch backend")
    return True
