"""The same weights through the torch engine and MinkowskiEngine give the same outputs and gradients.

Skipped, saying why, where MinkowskiEngine is not installed (it has no PyPI wheels: .ci/run installs
the cached wheel, scripts/build_minkowski.sh builds one).
"""

from __future__ import annotations

import pytest
import torch
from sparseskull.sparse import SparseTensor
from sparseskull.sparse.backends import minkowski
from sparseskull.sparse.nn import (
    SparseActivation,
    SparseBatchNorm,
    SparseConv3d,
    SparseGenerativeConvTranspose3d,
    features,
    prune,
    target_mask,
    union,
)
from torch import nn
from torch.testing import assert_close

if not minkowski.available():
    pytest.skip("MinkowskiEngine is not installed (build it with scripts/build_minkowski.sh)", allow_module_level=True)

D = torch.float64
TOL = dict(rtol=1e-5, atol=1e-5)


def random_input(shape=(10, 9, 8), batch=2, density=0.2, channels=3, stride=1, seed=0) -> SparseTensor:
    g = torch.Generator().manual_seed(seed)
    idx = (torch.rand(batch, *shape, generator=g) < density).nonzero()
    coords = torch.cat([idx[:, :1], idx[:, 1:] * stride], dim=1)
    return SparseTensor.from_coords(coords, torch.randn(len(idx), channels, generator=g, dtype=D), stride)


def both(x: SparseTensor):
    """Leaf copies of the input features for each backend, and the two input tensors."""
    a = x.feats.detach().clone().requires_grad_(True)
    b = x.feats.detach().clone().requires_grad_(True)
    return a, b, x.replace(a), minkowski.to_minkowski(x.replace(b))


def assert_same(ours: SparseTensor, theirs) -> None:
    theirs = minkowski.from_minkowski(theirs)
    assert ours.stride == theirs.stride
    assert torch.equal(ours.coords, theirs.coords), "different coordinates"
    assert_close(ours.feats, theirs.feats, **TOL)


def run_both(layer: nn.Module, x: SparseTensor, **kwargs):
    a, b, xt, xm = both(x)
    yt, ym = layer(xt, **kwargs), layer(xm, **kwargs)
    assert_same(yt, ym)
    r = torch.randn_like(yt.feats)
    ym_sorted = minkowski.from_minkowski(ym)
    grads = []
    for y, leafs in ((yt, a), (ym_sorted, b)):
        layer.zero_grad()
        (y.feats * r).sum().backward()
        grads.append((leafs.grad.clone(), [p.grad.clone() for p in layer.parameters()]))
    assert_close(grads[0][0], grads[1][0], **TOL)
    for gt, gm in zip(grads[0][1], grads[1][1]):
        assert_close(gt, gm, **TOL)


@pytest.mark.parametrize("k, stride, in_stride", [(1, 1, 1), (3, 1, 1), (3, 1, 2), (5, 1, 1), (2, 2, 1), (2, 2, 2), (3, 2, 1)])
def test_conv_parity(k, stride, in_stride):
    layer = SparseConv3d(3, 4, kernel_size=k, stride=stride).double()
    run_both(layer, random_input(stride=in_stride, seed=k + stride))


@pytest.mark.parametrize("k", [2, 4])
def test_generative_transposed_conv_parity_creates_the_same_points(k):
    layer = SparseGenerativeConvTranspose3d(3, 2, kernel_size=k).double()
    run_both(layer, random_input(stride=2, seed=k))


def test_batchnorm_and_activation_parity():
    layer = nn.Sequential(SparseBatchNorm(3), SparseActivation(nn.ELU())).double()
    run_both(layer, random_input(seed=3))


def test_prune_and_union_parity():
    x = random_input(seed=4)
    a, b, xt, xm = both(x)
    keep_t = features(xt)[:, 0] > 0
    keep_m = features(xm)[:, 0] > 0
    assert_same(prune(xt, keep_t), prune(xm, keep_m))
    assert_same(union(prune(xt, keep_t), xt), union(prune(xm, keep_m), xm))


def test_weights_convert_both_ways():
    w = torch.randn(27, 2, 3)
    assert torch.equal(minkowski.weight_from_minkowski(minkowski.weight_to_minkowski(w, 3), 3), w)


class TinyCompletion(nn.Module):
    """Two downsamplings and two generative upsamplings with classification and pruning, as in the paper;
    ``skips``: each decoder level united with the encoder's output at its stride (the reference code's ``+``)."""

    def __init__(self, skips: bool = False):
        super().__init__()
        self.skips = skips
        self.enc = nn.ModuleList([SparseConv3d(1, 4, 3), SparseConv3d(4, 8, 2, 2), SparseConv3d(8, 8, 3), SparseConv3d(8, 8, 2, 2)])
        self.act = SparseActivation(nn.ELU())
        self.up = nn.ModuleList([SparseGenerativeConvTranspose3d(8, 8, 4), SparseGenerativeConvTranspose3d(8, 4, 2)])
        self.conv = nn.ModuleList([SparseConv3d(8, 8, 3), SparseConv3d(4, 4, 3)])
        self.cls = nn.ModuleList([SparseConv3d(8, 1, 1), SparseConv3d(4, 1, 1)])

    def forward(self, x, target):
        encoded = []
        for layer in self.enc:
            x = self.act(layer(x))
            encoded.append(x)
        skips = [encoded[2], encoded[0]]  # strides 2 and 1
        levels = []
        for up, conv, cls, skip in zip(self.up, self.conv, self.cls, skips):
            x = self.act(conv(self.act(up(x))))
            if self.skips:
                x = union(x, skip)
            logits = cls(x)
            keep = (features(logits)[:, 0] > 0) | target_mask(x, target)
            levels.append((x, logits, keep))
            x = prune(x, keep)
        return x, levels


@pytest.mark.parametrize("skips", [False, True])
def test_small_completion_network_parity(skips):
    torch.manual_seed(0)
    net = TinyCompletion(skips).double()
    for cls in net.cls:  # logits of both signs, so that pruning has something to decide
        nn.init.zeros_(cls.bias)
    x = random_input(shape=(16, 14, 12), batch=2, density=0.25, channels=1, seed=7)
    target = random_input(shape=(16, 14, 12), batch=2, density=0.04, channels=1, seed=8).cset
    a, b, xt, xm = both(x)
    out_t, levels_t = net(xt, target)
    out_m, levels_m = net(xm, target)
    for (yt, lt, kt), (ym, lm, km) in zip(levels_t, levels_m):
        assert_same(yt, ym)  # the generated points and their features
        assert_same(lt, lm)  # the classifier's logits
        kept_m = minkowski.from_minkowski(prune(ym, km))
        assert torch.equal(prune(yt, kt).coords, kept_m.coords)  # the same points survive pruning
        assert 0 < int(kt.sum()) < len(yt)
    assert_same(out_t, out_m)

    r = torch.randn_like(out_t.feats)
    grads = []
    for out, leafs in ((out_t, a), (minkowski.from_minkowski(out_m), b)):
        net.zero_grad()
        loss = (out.feats * r).sum()
        loss.backward()
        grads.append((leafs.grad.clone(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    assert_close(grads[0][0], grads[1][0], **TOL)
    assert grads[0][1].keys() == grads[1][1].keys() and len(grads[0][1]) > 10
    for name in grads[0][1]:
        assert_close(grads[0][1][name], grads[1][1][name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("skips", [False, True])
def test_paper_network_parity_on_a_small_skull(skull_128, skips):
    """The whole Table 1 network (ch1), with and without skips, same weights, both backends: the same logits and
    kept points at every level, the same output, and the same gradients of the loss."""
    import numpy as np
    from sparseskull.data.resample import downsample_to
    from sparseskull.data.synth.defects import cut_random_defect
    from sparseskull.nets.sparse_net import SparseCompletionNet

    complete = downsample_to(skull_128.mask, 64)
    defect = cut_random_defect(complete, "bilateral", np.random.default_rng(1))
    from sparseskull.nets.sparse_net import completion_loss

    x = SparseTensor.from_mask(defect.defective, dtype=D)
    target = SparseTensor.from_mask(complete).cset
    torch.manual_seed(0)
    net = SparseCompletionNet("ch1", skips=skips).double().train()
    for cls in net.classify:
        nn.init.zeros_(cls.bias)
    grads = []
    outs = []
    for xin in (x, minkowski.to_minkowski(x)):
        net.zero_grad()
        out = net(xin, target=target)
        completion_loss(out).backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    out_t, out_m = outs
    for lt, lm in zip(out_t.levels, out_m.levels):
        assert lt.kept == lm.kept
        assert int(lt.target.sum()) == int(lm.target.sum())
        assert_close(torch.sort(lt.logits).values, torch.sort(lm.logits).values, **TOL)
    assert len(out_t.levels) == 6
    assert_same(out_t.output, out_m.output)
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name], **TOL, msg=lambda m, n=name: f"{n}: {m}")
