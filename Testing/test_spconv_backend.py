"""The spconv backend: forward parity with the torch engine, one thread on CPU, no silent wrong answers.

Skipped, saying why, where spconv is not installed (it is in the test extra on Linux).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sparseskull.sparse import SparseTensor
from sparseskull.sparse import functional as F
from sparseskull.sparse.backends import spconv as S
from sparseskull.sparse.nn import SparseConv3d
from torch.testing import assert_close

if not S.available():
    pytest.skip("spconv is not installed (pip install spconv)", allow_module_level=True)


def random_input(stride=1, seed=0, shape=(30, 26, 22), density=0.2, channels=8):
    g = torch.Generator().manual_seed(seed)
    idx = (torch.rand(2, *shape, generator=g) < density).nonzero()
    coords = torch.cat([idx[:, :1], (idx[:, 1:] + torch.tensor([37, -5, 3])) * stride], dim=1)  # off-origin, negative
    return SparseTensor.from_coords(coords, torch.randn(len(idx), channels, generator=g), stride)


def test_self_check_passes_on_cpu():
    assert S.self_check("cpu") is True


@pytest.mark.slow
@pytest.mark.parametrize("op, k, in_stride", [("conv", 3, 1), ("conv", 3, 4), ("down", 2, 1), ("up", 4, 2), ("up", 2, 4)])
def test_forward_parity_with_many_threads_requested(op, k, in_stride):
    """With 2 threads set, spconv alone races on CPU; the backend runs it on one and restores the setting."""
    torch.set_num_threads(2)
    x = random_input(in_stride, seed=k)
    w = torch.randn(k**3, 8, 8) * 0.2
    with torch.no_grad():
        if op == "up":
            ref, got = F.generative_conv_transpose(x, w, None, k, 2), S.generative_conv_transpose(S.to_spconv(x), w, None, k, 2)
        else:
            stride = 2 if op == "down" else 1
            ref, got = F.conv(x, w, None, k, stride), S.conv(S.to_spconv(x), w, None, k, stride)
    got = S.from_spconv(got)
    assert torch.equal(ref.coords, got.coords)
    assert_close(ref.feats, got.feats, rtol=1e-4, atol=1e-4)
    assert torch.get_num_threads() == 2


def test_layers_dispatch_and_refuse_cpu_backward():
    layer = SparseConv3d(8, 4, 3)
    x = S.to_spconv(random_input())
    with torch.no_grad():
        y = layer(x)
    assert isinstance(y, S.SpconvTensor) and S.point_count(y) == S.point_count(x)
    with pytest.raises(RuntimeError, match="no backward pass on CPU"):
        layer(x)


@pytest.mark.parametrize("skips", [False, True])
def test_paper_network_inference_parity(skull_128, skips):
    from sparseskull.data.resample import downsample_to
    from sparseskull.data.synth.defects import cut_random_defect
    from sparseskull.nets.sparse_net import SparseCompletionNet

    complete = downsample_to(skull_128.mask, 64)
    defect = cut_random_defect(complete, "random_1", np.random.default_rng(2))
    x = SparseTensor.from_mask(defect.defective, dtype=torch.float64)  # float64: no pruning decision flips on rounding
    torch.manual_seed(0)
    net = SparseCompletionNet("ch1", skips=skips).double().train()  # batch statistics keep the logits O(1); no target: keep = logit > 0
    with torch.no_grad():
        for cls in net.classify:
            torch.nn.init.zeros_(cls.bias)
        ref = net(x, tau=0.0)
        got = net(S.to_spconv(x), tau=0.0)
    for a, b in zip(ref.levels, got.levels):
        assert a.kept == b.kept
        assert_close(torch.sort(a.logits).values, torch.sort(b.logits).values, rtol=1e-4, atol=1e-4)
    assert len(ref.levels) == 6 and ref.levels[-1].kept > 0
    assert torch.equal(ref.output.coords, S.from_spconv(got.output).coords)


def test_union_matches_the_torch_engine_and_refuses_other_grids():
    from sparseskull.sparse import functional as F

    g = torch.Generator().manual_seed(4)
    idx = (torch.rand(1, 12, 10, 9, generator=g) < 0.3).nonzero()
    x = SparseTensor.from_coords(idx * 2, torch.randn(len(idx), 3, generator=g, dtype=torch.float64), stride=2)
    keep = torch.rand(len(x), generator=g) < 0.4
    other = x.replace(torch.randn(len(x), 3, generator=g, dtype=torch.float64))
    want = F.union(F.prune(x, keep), other)
    sx = S.to_spconv(x)
    have = S.from_spconv(S.union(S.prune(sx, keep), S.to_spconv(other)))
    assert torch.equal(want.coords, have.coords)
    assert_close(want.feats, have.feats)
    with pytest.raises(ValueError, match="one grid"):
        S.union(sx, S.SpconvTensor(sx.t, 4, sx.origin))
