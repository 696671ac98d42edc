"""Every sparse operation against a float64 dense reference (conv3d, strided conv3d, conv_transpose3d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sparseskull.sparse import (
    PointExplosionError,
    SparseTensor,
    conv,
    generative_conv_transpose,
    prune,
    target_mask,
    union,
)
from sparseskull.sparse.kernel_map import kernel_offsets, minkowski_order
from sparseskull.sparse.tensor import CoordinateSet, pack, unpack
from torch.testing import assert_close

D = torch.float64


def random_sparse(shape, batch=1, density=0.15, channels=3, stride=1, seed=0, border=False) -> SparseTensor:
    """Random points on a grid of ``shape`` voxels at ``stride`` (coordinates = index * stride)."""
    g = torch.Generator().manual_seed(seed)
    occupied = torch.rand(batch, *shape, generator=g) < density
    if border:  # force points onto every face of the grid
        occupied[:, 0] = occupied[:, -1] = True
        occupied[:, :, 0] = occupied[:, :, -1] = True
        occupied[:, :, :, 0] = occupied[:, :, :, -1] = True
    idx = occupied.nonzero()
    coords = torch.cat([idx[:, :1], idx[:, 1:] * stride], dim=1)
    feats = torch.randn(len(idx), channels, generator=g, dtype=D)
    return SparseTensor.from_coords(coords, feats, stride)


def dense_weight(weight: torch.Tensor, k: int, transpose: bool = False) -> torch.Tensor:
    w = weight.reshape(k, k, k, weight.shape[1], weight.shape[2])
    return w.permute(3, 4, 0, 1, 2) if transpose else w.permute(4, 3, 0, 1, 2)


def sample(dense: torch.Tensor, x: SparseTensor, origin=(0, 0, 0)) -> torch.Tensor:
    c = x.coords.to(torch.int64)
    rel = torch.div(c[:, 1:] - torch.tensor(origin), x.stride, rounding_mode="floor")
    return dense[c[:, 0], :, rel[:, 0], rel[:, 1], rel[:, 2]]


def leaf(x: SparseTensor) -> SparseTensor:
    return x.replace(x.feats.detach().clone().requires_grad_(True))


def check_grads(y_sparse, y_dense_at_points, x, weight, x_ref_feats, weight_ref):
    r = torch.randn_like(y_sparse.feats)
    (y_sparse.feats * r).sum().backward()
    (y_dense_at_points * r).sum().backward()
    assert_close(x.feats.grad, x_ref_feats.grad)
    assert_close(weight.grad, weight_ref.grad)


CASES = [
    dict(shape=(9, 7, 8), batch=1, density=0.2),
    dict(shape=(5, 12, 6), batch=3, density=0.1),  # anisotropic grid, a batch of several
    dict(shape=(6, 6, 6), batch=2, density=0.3, border=True),  # points on every grid border
    dict(shape=(4, 4, 4), batch=1, density=0.0, single=True),  # a single point
]


def make_input(case, channels=3, stride=1, seed=0):
    if case.get("single"):
        coords = torch.tensor([[0, 2 * stride, 1 * stride, 3 * stride]])
        return SparseTensor.from_coords(coords, torch.randn(1, channels, dtype=D), stride)
    return random_sparse(case["shape"], case["batch"], case["density"], channels, stride, seed, case.get("border", False))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_conv_stride1_matches_dense_conv3d(case, k):
    x = leaf(make_input(case, 3))
    weight = torch.randn(k**3, 3, 4, dtype=D, requires_grad=True)
    bias = torch.randn(4, dtype=D)
    y = conv(x, weight, bias, kernel_size=k, stride=1)
    assert torch.equal(y.coords, x.coords)

    x_ref, w_ref = leaf(x), weight.detach().clone().requires_grad_(True)
    lo = -(k // 2) if k % 2 else 0
    pad = (-lo, k - 1 + lo) * 3
    dense = F.conv3d(F.pad(x_ref.to_dense(case["shape"], batch_size=case["batch"]), pad), dense_weight(w_ref, k), bias)
    ref = sample(dense, x_ref)
    assert_close(y.feats, ref)
    check_grads(y, ref, x, weight, x_ref.feats, w_ref)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("in_stride", [1, 2])
def test_strided_conv_matches_dense_strided_conv3d(case, k, in_stride):
    x = leaf(make_input(case, 3, in_stride))
    weight = torch.randn(k**3, 3, 5, dtype=D, requires_grad=True)
    y = conv(x, weight, None, kernel_size=k, stride=2)
    assert y.stride == 2 * in_stride
    expected = {tuple(r) for r in (torch.div(x.coords[:, 1:], 2 * in_stride, rounding_mode="floor") * 2 * in_stride).tolist()}
    assert {tuple(r) for r in y.coords[:, 1:].tolist()} == expected

    x_ref, w_ref = leaf(x), weight.detach().clone().requires_grad_(True)
    shape = [n + n % 2 for n in case["shape"]]
    padding = 1 if k == 3 else 0
    dense = F.conv3d(x_ref.to_dense(tuple(shape), batch_size=case["batch"]), dense_weight(w_ref, k), stride=2, padding=padding)
    ref = sample(dense, y)  # output voxel u sits at coordinate u * 2 * in_stride
    assert_close(y.feats, ref)
    check_grads(y, ref, x, weight, x_ref.feats, w_ref)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("k", [2, 4])
def test_generative_transposed_conv_matches_dense_conv_transpose3d(case, k):
    x = leaf(make_input(case, 4, stride=2))
    weight = torch.randn(k**3, 4, 3, dtype=D, requires_grad=True)
    y = generative_conv_transpose(x, weight, None, kernel_size=k, stride=2)
    assert y.stride == 1
    # every coordinate the kernel reaches, and no other
    reach = {tuple((c + o).tolist()) for c in x.coords[:, 1:] for o in kernel_offsets(k)} if len(x) else set()
    assert {tuple(r) for r in y.coords[:, 1:].tolist()} == reach

    x_ref, w_ref = leaf(x), weight.detach().clone().requires_grad_(True)
    dense_in = x_ref.to_dense(case["shape"], batch_size=case["batch"])  # voxel v at coordinate 2v
    dense = F.conv_transpose3d(dense_in, dense_weight(w_ref, k, transpose=True), stride=2)
    ref = sample(dense, y)
    assert_close(y.feats, ref)
    assert_close(ref.abs().sum(), dense.abs().sum())  # nothing outside the created points
    check_grads(y, ref, x, weight, x_ref.feats, w_ref)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("k, stride", [(3, 1), (2, 2)])
def test_fused_inference_block_matches_dense_conv_norm_elu(case, k, stride):
    """Inference folds the batch norm into the convolution and applies the ELU per block of rows; the
    result must be the dense float64 conv3d -> batch norm -> ELU, and the next layer must read the
    output's own zero row instead of copying the features."""
    from sparseskull.sparse.functional import _padded
    from sparseskull.sparse.nn import (
        SparseActivation,
        SparseBatchNorm,
        SparseConv3d,
        SparseConvNormAct,
    )

    torch.manual_seed(3)
    x = make_input(case, 3)
    block = SparseConvNormAct(SparseConv3d(3, 4, k, stride, bias=True), SparseBatchNorm(4), SparseActivation(torch.nn.ELU(0.7)))
    block = block.to(D).eval()
    norm = block[1]
    norm.running_mean.uniform_(-0.5, 0.5)
    norm.running_var.uniform_(0.3, 2.0)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.bias.data.uniform_(-0.5, 0.5)
    with torch.no_grad():
        y = block(x)
    conv_layer = block[0]
    if stride == 1:
        pad = (1, 1) * 3
        dense = F.conv3d(F.pad(x.to_dense(case["shape"], batch_size=case["batch"]), pad), dense_weight(conv_layer.weight, k), conv_layer.bias)
    else:
        shape = [n + n % 2 for n in case["shape"]]
        dense = F.conv3d(x.to_dense(tuple(shape), batch_size=case["batch"]), dense_weight(conv_layer.weight, k), conv_layer.bias, stride=2)
    scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps))[None, :, None, None, None]
    ref = sample(F.elu((dense - norm.running_mean[None, :, None, None, None]) * scale + norm.bias[None, :, None, None, None], 0.7), y)
    assert_close(y.feats, ref)
    if len(y):
        padded = _padded(y.feats)
        assert padded.data_ptr() == y.feats.data_ptr() and padded.shape[0] == len(y) + 1 and not padded[-1].any()
    with torch.enable_grad():  # training (or any autograd) takes the three layers, with the same answer
        assert_close(block(x).feats, ref)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_trains_as_dense_batch_norm_and_tracks_the_variance_it_normalises_with(momentum):
    """Training mode normalises, and back-propagates, as a dense float64 ``nn.BatchNorm1d`` over the points; the
    running mean follows it, and the running variance follows the biased variance the training used (the dense
    layer's is n / (n - 1) times larger). So after enough steps on one batch of 4 points, as the deepest level of one
    skull at 64 holds, eval mode gives what training mode gave; with the dense layer's statistics it does not."""
    from sparseskull.sparse.nn import SparseBatchNorm

    torch.manual_seed(5)
    feats = torch.randn(4, 3, dtype=D) * torch.tensor([1.0, 3.0, 0.2], dtype=D) + torch.tensor([0.5, -2.0, 4.0], dtype=D)
    x = leaf(SparseTensor.from_coords(torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 1], [0, 3, 3, 3]]), feats))
    feats = x.feats.detach()
    norm, ref = SparseBatchNorm(3, momentum=momentum).to(D), torch.nn.BatchNorm1d(3, momentum=momentum).to(D)
    for m in (norm, ref):
        m.weight.data.copy_(torch.tensor([0.5, 1.5, -1.0]))
        m.bias.data.copy_(torch.tensor([0.1, -0.3, 0.7]))
    x_ref = feats.clone().requires_grad_(True)
    y, y_ref = norm(x), ref(x_ref)
    assert_close(y.feats, y_ref)
    (y.feats * torch.arange(12, dtype=D).reshape(4, 3)).sum().backward()
    (y_ref * torch.arange(12, dtype=D).reshape(4, 3)).sum().backward()
    assert_close(x.feats.grad, x_ref.grad)
    assert_close(norm.weight.grad, ref.weight.grad)
    assert_close(norm.bias.grad, ref.bias.grad)
    assert_close(norm.running_mean, ref.running_mean)
    assert_close(norm.running_var, ref.running_var - (0.1 if momentum else 1.0) * feats.var(0, correction=1) / 4)  # n / (n - 1) = 4 / 3
    with torch.no_grad():
        for _ in range(400):
            norm(x), ref(x_ref)
        train_out = norm(x).feats
        norm.eval(), ref.eval()
        assert_close(norm(x).feats, train_out)
        assert not torch.allclose(ref(x_ref), train_out, atol=1e-3)
    assert_close(norm.running_var, feats.var(0, correction=0))


def test_empty_tensor_passes_through_every_op():
    x = SparseTensor.from_coords(torch.zeros(0, 4, dtype=torch.int64), torch.zeros(0, 3, dtype=D), stride=2)
    weight = torch.randn(27, 3, 2, dtype=D, requires_grad=True)
    for y in (
        conv(x, weight, None, 3, 1),
        conv(x, torch.randn(8, 3, 2, dtype=D), None, 2, 2),
        generative_conv_transpose(x, torch.randn(8, 3, 2, dtype=D), None, 2, 2),
    ):
        assert len(y) == 0 and y.feats.shape == (0, 2)
    conv(x, weight, None, 3, 1).feats.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_prune_union_and_targets():
    x = random_sparse((6, 6, 6), batch=2, density=0.3, channels=2, seed=3)
    keep = x.feats[:, 0] > 0
    p = prune(x, keep)
    assert len(p) == int(keep.sum())
    assert torch.equal(p.coords, x.coords[keep]) and torch.equal(p.feats, x.feats[keep])

    a, b = prune(x, keep), prune(x, ~keep | (x.feats[:, 1] > 0))
    u = union(a, b)
    dense = a.to_dense((6, 6, 6), batch_size=2) + b.to_dense((6, 6, 6), batch_size=2)
    assert_close(u.to_dense((6, 6, 6), batch_size=2), dense)
    assert len(u) == len(x)

    # gradients: each input's features get the dense gradient at their own points (both where the sets overlap)
    fa, fb = a.feats.clone().requires_grad_(), b.feats.clone().requires_grad_()
    a_g, b_g = SparseTensor(fa, a.cset), SparseTensor(fb, b.cset)
    weight = torch.randn(2, 2, 6, 6, 6, dtype=D)
    (union(a_g, b_g).to_dense((6, 6, 6), batch_size=2) * weight).sum().backward()
    for feats, part in ((fa, a), (fb, b)):
        c = part.coords
        assert_close(feats.grad, weight[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]])
    assert torch.autograd.gradcheck(lambda p, q: union(SparseTensor(p, a.cset), SparseTensor(q, b.cset)).feats, (fa.detach().requires_grad_(), fb.detach().requires_grad_()))

    coarse = conv(x, torch.randn(8, 2, 1, dtype=D), None, 2, 2)
    fine = generative_conv_transpose(coarse, torch.randn(8, 1, 1, dtype=D), None, 2, 2)
    hit = target_mask(fine, x.cset)
    assert torch.equal(fine.cset.keys[hit], x.cset.keys)  # each generated point is a target iff it is in x
    assert torch.equal(target_mask(coarse, x.cset), torch.ones(len(coarse), dtype=torch.bool))


def test_point_cap_names_the_level_and_the_count():
    x = random_sparse((8, 8, 8), density=0.5, channels=1, stride=2)
    with pytest.raises(PointExplosionError, match=r"decoder level 3 created [\d,]+ points .* cap of 100"):
        generative_conv_transpose(x, torch.randn(64, 1, 1, dtype=D), None, 4, 2, max_points=100, level="decoder level 3")


@pytest.mark.parametrize("kernel, stride", [(3, 1), (5, 1), (3, 4)])
def test_the_reverse_of_a_sets_map_to_itself_is_its_columns_flipped(kernel, stride):
    from sparseskull.sparse.kernel_map import _reverse, cached_map

    x = random_sparse((12, 12, 12), batch=2, density=0.3, channels=1, stride=stride, seed=5)
    kmap = cached_map(x.cset, x.cset, kernel, stride, 1)
    assert kmap.symmetric
    assert torch.equal(kmap.rev, _reverse(kmap.nbr, kmap.n_in, kmap.n_out))  # the scatter it replaces
    coarse = random_sparse((12, 12, 12), batch=2, density=0.3, channels=1, stride=2 * stride, seed=6)
    assert not cached_map(x.cset, coarse.cset, kernel, stride, 1).symmetric  # two sets: the scatter stays


def test_kernel_maps_are_cached_per_level_and_shared():
    x = random_sparse((8, 8, 8), density=0.3, channels=2)
    w1, w2 = torch.randn(27, 2, 2, dtype=D), torch.randn(27, 2, 2, dtype=D)
    y1 = conv(x, w1, None, 3, 1)
    assert len(x.cset.maps) == 1
    conv(y1, w2, None, 3, 1)  # same coordinates: the same map
    assert len(x.cset.maps) == 1
    conv(x, torch.randn(125, 2, 2, dtype=D), None, 5, 1)  # another kernel: another map
    assert len(x.cset.maps) == 2
    conv(x, torch.randn(1, 2, 2, dtype=D), None, 1, 1)  # pointwise: a plain GEMM, no map
    assert len(x.cset.maps) == 2


def test_results_are_deterministic():
    x = random_sparse((10, 10, 10), density=0.3, channels=4, seed=9)
    w = torch.randn(27, 4, 4, dtype=torch.float32)
    outs = [conv(x.replace(x.feats.float()), w, None, 3, 1).feats for _ in range(2)]
    assert torch.equal(outs[0], outs[1])


def test_masks_and_dense_grids_round_trip():
    rng = np.random.default_rng(0)
    masks = [rng.random((7, 5, 6)) < 0.3, rng.random((7, 5, 6)) < 0.1]
    x = SparseTensor.from_mask(masks)
    dense = x.to_dense((7, 5, 6), batch_size=2)[:, 0].numpy()
    assert np.array_equal(dense > 0, np.stack(masks))
    back = SparseTensor.from_dense(x.to_dense((7, 5, 6)))
    assert torch.equal(back.coords, x.coords)


def test_coordinates_pack_and_validate():
    c = torch.tensor([[0, -5, 3, 7], [2, 100, -131072, 131071], [0, -5, 3, 6]])
    assert torch.equal(unpack(pack(c)), c.int())
    keys = pack(c)
    assert keys[2] < keys[0] < keys[1], "keys sort as (batch, x, y, z)"
    with pytest.raises(ValueError, match="must lie in"):
        pack(torch.tensor([[0, 1 << 17, 0, 0]]))
    with pytest.raises(ValueError, match="multiple of 4"):
        CoordinateSet.from_coords(torch.tensor([[0, 2, 0, 0]]), stride=4)


def test_minkowski_offset_order_is_x_fastest():
    order = minkowski_order(3)
    offs = kernel_offsets(3)
    assert offs[order[0]].tolist() == [-1, -1, -1]
    assert offs[order[1]].tolist() == [0, -1, -1]  # ME's second offset moves x
    assert offs[order[3]].tolist() == [-1, 0, -1]
    assert sorted(order.tolist()) == list(range(27))


@pytest.mark.parametrize("stride, kernel_size, conv_stride", [(1, 3, 1), (2, 3, 1), (1, 2, 2), (2, 5, 1)])
def test_neighbour_tables_match_a_key_search(monkeypatch, stride, kernel_size, conv_stride):
    """The dense index table (two batches, points on every face of the grid) finds the neighbours a plain
    search of the sorted keys finds."""
    from sparseskull.sparse import kernel_map

    x = random_sparse((9, 7, 6), batch=2, density=0.4, channels=1, stride=stride, seed=5, border=True)
    target = x.cset if conv_stride == 1 else kernel_map.downsample_coords(x.cset, 2)
    offsets = kernel_offsets(kernel_size) * stride
    table = kernel_map._neighbours(x.cset, target, offsets)
    monkeypatch.setattr(kernel_map, "DENSE_CELLS_PER_POINT", 0)
    monkeypatch.setattr(kernel_map, "DENSE_MIN_CELLS", 0)
    searched = kernel_map._neighbours(x.cset, target, offsets)  # the key-search path, no table
    assert torch.equal(table.long(), searched.long())
    assert int((searched < len(x)).sum()) > len(target)  # real neighbours were found, not only misses


def test_autocast_dtype_reads_the_active_autocast():
    """The sparse ops cast to the autocast dtype themselves (and fused inference stays off under autocast): the
    helper that reads it must see it, not swallow an error and say 'none'."""
    from sparseskull.sparse.functional import autocast_dtype

    assert autocast_dtype("cpu") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype("cpu") == torch.bfloat16
