"""The paper's network (Table 1): parameter counts, pruning rules, and a forward/backward on a small skull."""

from __future__ import annotations

import pytest
import torch
from sparseskull.cli import main
from sparseskull.data.resample import downsample_to
from sparseskull.data.synth.defects import cut_random_defect
from sparseskull.nets.sparse_net import SparseCompletionNet, completion_loss, layer_table, parse_channels, widen
from sparseskull.sparse import SparseTensor


def test_parameter_counts_match_the_paper():
    """ch1: 0.435M (MinkowskiEngine's count for the same network is 434,686); ch2: 18.14M."""
    assert SparseCompletionNet("ch1").parameter_count() == 434_686
    assert abs(SparseCompletionNet("ch2").parameter_count() - 18.14e6) / 18.14e6 < 0.01


def test_layer_table_lists_every_parameter_in_table_1_order():
    model = SparseCompletionNet("ch1")
    rows = layer_table(model)
    assert sum(r["params"] for r in rows) == model.parameter_count()
    kinds = [r["kind"] for r in rows]
    assert kinds.count("strided conv") == 6 and kinds.count("generative transposed conv") == 6 and kinds.count("classifier") == 6
    generative = [r for r in rows if r["kind"] == "generative transposed conv"]
    assert [r["kernel"] for r in generative] == [4, 2, 2, 2, 2, 2]
    assert rows[13]["layer"] == "up.0.conv" and rows[14]["layer"] == "refine.0.0" and rows[15]["layer"] == "classify.0"


def test_channels_presets_and_lists():
    assert parse_channels("ch1") == (8, 8, 16, 16, 32, 32, 64)
    assert parse_channels("4,4,8,8,16,16,32") == (4, 4, 8, 8, 16, 16, 32)
    with pytest.raises(ValueError, match="seven"):
        parse_channels([8, 8, 16])
    with pytest.raises(ValueError, match="ch1"):
        parse_channels("ch9")


def test_info_command_prints_the_table(capsys):
    assert main(["info", "--channels", "ch1"]) == 0
    out = capsys.readouterr().out
    assert "434,686" in out and "generative transposed conv" in out


def _trained_looking_norms(model) -> None:
    """Batch norms with running statistics, scales and shifts away from their initial 0, 1, 1, 0."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.3, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)


@pytest.fixture(scope="module")
def small_case(skull_128):
    complete = downsample_to(skull_128.mask, 64)
    defect = cut_random_defect(complete, "parietotemporal", __import__("numpy").random.default_rng(0))
    return SparseTensor.from_mask(defect.defective), SparseTensor.from_mask(complete).cset


def test_training_forward_keeps_the_ground_truth_and_backpropagates(small_case):
    torch.manual_seed(0)
    x, target = small_case
    model = SparseCompletionNet("ch1").train()
    out = model(x, target=target)
    assert len(out.levels) == 6
    assert out.output.stride == 1
    for level in out.levels[:-1]:  # ground-truth points survive pruning in training
        assert level.kept >= int(level.target.sum())
    loss = sum(
        torch.nn.functional.binary_cross_entropy_with_logits(level.logits, level.target.float()) for level in out.levels
    ) / len(out.levels)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
def test_inference_prunes_by_tau_and_caps_points(small_case):
    x, _ = small_case
    model = SparseCompletionNet("ch1").eval()
    with torch.no_grad():
        low = model(x, tau=-1e9)  # keeps everything it generates
        high = model(x, tau=1e9)  # keeps nothing
    assert low.levels[-1].kept == len(low.levels[-1].logits) > 0
    assert high.levels[0].kept == 0 and len(high.output) == 0
    with pytest.raises(Exception, match="decoder level 2 of 6 created"):
        with torch.no_grad():
            model(x, tau=-1e9, max_points=low.levels[0].kept)


def test_empty_input_is_refused():
    empty = SparseTensor.from_coords(torch.zeros(0, 4, dtype=torch.int64), torch.zeros(0, 1))
    with pytest.raises(ValueError, match="empty"):
        SparseCompletionNet("ch1")(empty)


@pytest.mark.slow
def test_a_few_adam_steps_on_one_skull_learn_it(small_case):
    """Training wiring end to end: loss falls, and the completed skull overlaps the complete one better."""
    from sparseskull.nets.sparse_net import completion_loss

    torch.manual_seed(0)
    x, target = small_case
    model = SparseCompletionNet("ch1")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def dice_with_target(output) -> float:
        pred = set(map(tuple, output.coords.tolist()))
        truth = set(map(tuple, target.coords.tolist()))
        return 2 * len(pred & truth) / max(1, len(pred) + len(truth))

    losses = []
    for _ in range(40):
        model.train()
        out = model(x, target=target)
        loss = completion_loss(out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():  # batch statistics: 40 steps do not settle the running ones
        final = dice_with_target(model(x).output)
    assert losses[-1] < 0.5 * losses[0], losses[::8]
    assert final > 0.8, final


@pytest.mark.slow
def test_inputs_smaller_than_the_total_stride_run():
    """The network is sparse: a skull smaller than 64 voxels per axis needs no padding (the coarse grid
    simply holds one point), so a tiny input gives a result, not an engine error."""
    coords = torch.tensor([[0, i, j, k] for i in range(5) for j in range(4) for k in range(3)])
    x = SparseTensor.from_coords(coords)
    model = SparseCompletionNet("ch1").eval()
    with torch.no_grad():
        out = model(x, tau=-1e9)
    assert out.output.stride == 1 and len(out.output) > 0


def test_inference_is_memory_lean(small_case, monkeypatch):
    """Inference builds no reverse kernel maps (only a backward needs them) and leaves no kernel map cached on
    the input, which the caller keeps; a training step builds the reverse maps it needs."""
    from sparseskull.sparse import kernel_map

    calls = []
    real = kernel_map._reverse
    monkeypatch.setattr(kernel_map, "_reverse", lambda *a: calls.append(1) or real(*a))
    x, target = small_case
    model = SparseCompletionNet("ch1").eval()
    with torch.inference_mode():
        model(x)
    assert calls == [] and x.cset.maps == {}
    model.train()
    out = model(x, target=target)
    sum(level.logits.sum() for level in out.levels).backward()
    assert len(calls) > 0


def test_oracle_pruning_keeps_exactly_the_targets_points(small_case):
    """The benchmark's stand-in for a trained network: at every level, the kept points are the target's."""
    from sparseskull.sparse.kernel_map import coarsen_to

    x, target = small_case
    with torch.inference_mode():
        out = SparseCompletionNet("ch1").eval()(x, target=target, oracle=True)
    strides = [32, 16, 8, 4, 2, 1]
    assert [level.kept for level in out.levels] == [len(coarsen_to(target, s)) for s in strides]
    assert torch.equal(out.output.cset.keys, target.keys)
    with pytest.raises(ValueError, match="oracle"):
        SparseCompletionNet("ch1")(x, oracle=True)


def test_fused_inference_gives_the_layer_by_layer_answer(small_case):
    """In inference the conv-norm-ELU blocks and the generative blocks run fused (norm folded in, ELU per block
    of rows); in float64 every level's logits equal those of the plain layer-by-layer path (which autograd
    takes), with trained-looking norm statistics."""
    torch.manual_seed(0)
    x, target = small_case
    model = SparseCompletionNet("ch1").double().eval()
    _trained_looking_norms(model)
    x = x.replace(x.feats.double())
    with torch.no_grad():
        fused = model(x, target=target, oracle=True)
    plain = model(x, target=target, oracle=True)  # grad enabled: the layers one after the other
    assert [level.kept for level in fused.levels] == [level.kept for level in plain.levels]
    for a, b in zip(fused.levels, plain.levels):
        torch.testing.assert_close(a.logits, b.logits.detach(), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------- skip connections


def test_skips_add_no_parameter():
    assert SparseCompletionNet("ch1", skips=True).parameter_count() == 434_686


@pytest.mark.slow
def test_skips_keep_the_inputs_points_at_every_level(small_case):
    """With skips, each decoder level is the union of what it generated with the encoder's points at its stride,
    so with nothing pruned every level holds the input brought to that stride, and the output holds the input.
    Without skips, an untrained network's generated points need not cover the input."""
    from sparseskull.sparse.kernel_map import coarsen_to
    from sparseskull.sparse.nn import release_maps

    x, target = small_case
    torch.manual_seed(0)
    model = SparseCompletionNet("ch1", skips=True).eval()
    with torch.no_grad():
        out = model(x, tau=-1e9)  # keep everything
    got = out.output.cset
    assert (got.lookup(x.cset.keys) < len(got)).all(), "an input point is missing from the output"
    for level, stride in zip(out.levels, (32, 16, 8, 4, 2, 1)):
        assert len(level.logits) >= len(coarsen_to(x.cset, stride))
    release_maps(x)


@pytest.mark.slow
def test_skip_network_equals_a_dense_float64_reference_of_its_union(small_case):
    """The skip path by hand: the decoder level's refined tensor plus the encoder's output at that stride, on
    dense float64 grids, gives the same features the network's classifier sees (checked at the first level)."""
    from sparseskull.sparse.nn import features, union

    x, _ = small_case
    torch.manual_seed(1)
    model = SparseCompletionNet("ch1", skips=True).double().eval()
    xd = x.replace(x.feats.double())
    seen = {}
    model.classify[0].register_forward_pre_hook(lambda m, args: seen.setdefault("in", args[0]))
    with torch.no_grad():
        model(xd, tau=-1e9)
        h = xd
        encoded = []
        for block in model.encoder:
            h = block(h)
            encoded.append(h)
        dec = model.refine[0](model.up[0](h))
        skip = encoded[-2]
        origin = [int(v) for v in torch.minimum(dec.coords[:, 1:].min(0).values, skip.coords[:, 1:].min(0).values)]
        top = torch.maximum(dec.coords[:, 1:].max(0).values, skip.coords[:, 1:].max(0).values)
        shape = tuple(int((t - o) // 32) + 1 for t, o in zip(top.tolist(), origin))
        dense = dec.to_dense(shape, origin, 1) + skip.to_dense(shape, origin, 1)
    u = seen["in"]
    assert torch.equal(u.cset.keys, union(dec, skip).cset.keys)
    torch.testing.assert_close(u.to_dense(shape, origin, 1), dense, rtol=1e-12, atol=1e-12)
    assert features(u).dtype == torch.float64


@pytest.mark.parametrize("skips", [False, True])
def test_fused_inference_with_and_without_skips(small_case, skips):
    torch.manual_seed(0)
    x, target = small_case
    model = SparseCompletionNet("ch1", skips=skips).double().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.3, 2.0)
    x = x.replace(x.feats.double())
    with torch.no_grad():
        fused = model(x, tau=0.0)
    plain = model(x, tau=0.0)
    assert [level.kept for level in fused.levels] == [level.kept for level in plain.levels]
    for a, b in zip(fused.levels, plain.levels):
        torch.testing.assert_close(a.logits, b.logits.detach(), rtol=1e-9, atol=1e-9)
    with pytest.raises(Exception, match="decoder level 1 of 6"):  # the point cap holds for the union too
        with torch.no_grad():
            model(x, tau=-1e9, max_points=len(fused.levels[0].logits) - 1)


@pytest.mark.slow
def test_a_skip_network_learns_a_skull_faster(small_case):
    """The same 25 Adam steps: the skip network's loss falls below the plain one's (the decoder keeps the input)."""
    from sparseskull.nets.sparse_net import completion_loss

    x, target = small_case
    final = {}
    for skips in (False, True):
        torch.manual_seed(0)
        model = SparseCompletionNet("ch1", skips=skips).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(25):
            loss = completion_loss(model(x, target=target))
            opt.zero_grad()
            loss.backward()
            opt.step()
        final[skips] = float(loss.detach())
    assert final[True] < 0.7 * final[False], final


# ---------------------------------------------------------------------------- widening


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_widened_network_computes_the_same_and_its_new_channels_learn(small_case, mode):
    """``widen`` grows every level; in float64 the wide network keeps the narrow one's points and logits at every
    level (with trained-looking norm statistics in eval, batch statistics in training), and the loss reaches the new
    channels' weights, the zeroed ones into the old channels included."""
    torch.manual_seed(0)
    x, target = small_case
    narrow = SparseCompletionNet("ch1", skips=True).double()
    _trained_looking_norms(narrow)
    wide = widen(narrow, "12,8,24,16,48,40,96")
    assert wide.channels == (12, 8, 24, 16, 48, 40, 96) and wide.skips
    assert wide.parameter_count() > narrow.parameter_count()
    narrow.train(mode == "train")
    wide.train(mode == "train")
    x = x.replace(x.feats.double())
    a, b = narrow(x, target=target, oracle=True), wide(x, target=target, oracle=True)  # every level runs
    assert [level.kept for level in a.levels] == [level.kept for level in b.levels]
    for la, lb in zip(a.levels, b.levels):
        torch.testing.assert_close(lb.logits, la.logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.output.coords, a.output.coords, rtol=0, atol=0)
    completion_loss(b).backward()
    first_refine = wide.refine[-1][0].weight  # the finest level's conv: 8 old channels of 12
    assert first_refine.grad[:, 8:, :8].abs().sum() > 0  # the zeroed weights get gradient, so the new channels come into use
    with pytest.raises(ValueError, match="at least as wide"):
        widen(narrow, "4,8,16,16,32,32,64")


def test_the_loss_weighs_the_points_not_in_the_input(small_case):
    """``given`` marks the input's own points at every level (with skips, every input point at the finest level);
    ``new_point_weight`` weighs the others in each level's mean, against a float64 reference written out here, and
    1 is the paper's plain mean."""
    torch.manual_seed(0)
    x, target = small_case
    model = SparseCompletionNet("ch1", skips=True).double().train()
    x = x.replace(x.feats.double())
    assert all(level.given is None for level in model(x, target=target).levels)  # only marked where asked for
    out = model(x, target=target, mark_given=True)
    last = out.levels[-1]
    assert int(last.given.sum()) == len(x.cset)  # the skip brings every input point to the finest level
    assert bool((last.target | ~last.given).all())  # the input's points are all in the complete skull
    assert 0 < int((~last.given).sum()) < len(last.given)
    expected = []
    for level in out.levels:
        t = level.target.double()
        bce = -(t * torch.nn.functional.logsigmoid(level.logits) + (1 - t) * torch.nn.functional.logsigmoid(-level.logits))
        w = 1.0 + 4.0 * (~level.given).double()
        expected.append((bce * w).sum() / w.sum())
    torch.testing.assert_close(completion_loss(out, 5.0), torch.stack(expected).mean(), rtol=1e-12, atol=1e-12)
    plain = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(lv.logits, lv.target.double()) for lv in out.levels]).mean()
    torch.testing.assert_close(completion_loss(out), plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match="positive"):
        completion_loss(out, 0.0)
    with pytest.raises(ValueError, match="mark_given=True"):
        completion_loss(model(x, target=target), 5.0)
