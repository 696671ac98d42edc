"""Augmentation keeps masks nested and volumes unchanged; training pairs come from either layout and both tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sparseskull.data.augment import Augmentation, augment
from sparseskull.data.pairs import (
    PairSampler,
    collate,
    dice_by_batch,
    load_skulls,
    split,
    upsample_nearest,
)
from sparseskull.sparse.tensor import CoordinateSet


def _box_pair():
    complete = np.zeros((40, 30, 20), bool)
    complete[5:30, 5:25, 3:15] = True
    defective = complete.copy()
    defective[10:20, 10:20, 5:10] = False
    return complete, defective


def test_identity_augmentation_only_moves_the_corner_to_the_origin():
    complete, defective = _box_pair()
    t, x = augment([complete, defective], np.random.default_rng(0), Augmentation.none())
    np.testing.assert_array_equal(t, np.argwhere(complete) - [5, 5, 3])
    np.testing.assert_array_equal(x, np.argwhere(defective) - [5, 5, 3])


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 0.5, 1.25)])
def test_rotations_keep_volume_and_nesting(spacing):
    complete, defective = _box_pair()
    for seed in range(5):
        t, x = augment([complete, defective], np.random.default_rng(seed), Augmentation(rotate_deg=10, shift=6), spacing)
        assert abs(len(t) - complete.sum()) / complete.sum() < 0.02  # nearest-neighbour rotation keeps the volume
        assert abs(len(x) - defective.sum()) / defective.sum() < 0.02
        truth = {tuple(v) for v in t}
        assert all(tuple(v) in truth for v in x)  # the defective skull stays inside the complete one
        assert t.min() >= 0 and np.all(t.min(axis=0) <= 6)  # placed at the drawn shift


def test_rotation_is_rigid_in_millimetres_on_anisotropic_grids():
    """A sphere in mm (an ellipsoid in voxels) stays the same sphere, whatever the rotation."""
    spacing = np.array([0.5, 0.5, 1.5])
    ijk = np.indices((60, 60, 20)).reshape(3, -1).T
    mm = (ijk - [30, 30, 10]) * spacing
    sphere = (np.linalg.norm(mm, axis=1) <= 12).reshape(60, 60, 20)
    (out,) = augment([sphere], np.random.default_rng(3), Augmentation(rotate_deg=25, shift=0), spacing)
    extent_mm = (out.max(axis=0) - out.min(axis=0) + 1) * spacing
    np.testing.assert_allclose(extent_mm, 24.5, atol=1.6)  # a voxel of slack per side on the coarse axis


def test_flip_mirrors_the_left_right_axis():
    a = np.zeros((10, 4, 4), bool)
    a[1:3, 1, 1] = True
    a[8, 2, 2] = True
    flipped = [augment([a], np.random.default_rng(s), Augmentation((0,), 0, 0))[0] for s in range(8)]
    kinds = {tuple(map(tuple, f.tolist())) for f in flipped}
    assert kinds == {((0, 0, 0), (1, 0, 0), (7, 1, 1)), ((0, 1, 1), (6, 0, 0), (7, 0, 0))}


def test_masks_resampled_together_do_not_mix():
    """The masks travel as the bits of one grid through one resampling: reordering them (each gets another bit) or adding
    an empty one changes no mask's coordinates, and a ninth mask is refused rather than lost."""
    rng = np.random.default_rng(7)
    masks = [rng.random((23, 17, 11)) < p for p in (0.5, 0.2, 0.05)]
    aug = Augmentation(flip_axes=(0, 1), rotate_deg=12, shift=4)
    for seed in range(4):
        spacing = (0.5, 0.5, 1.0 + seed)
        first = augment(masks, np.random.default_rng(seed), aug, spacing)
        reordered = augment(masks[::-1] + [np.zeros_like(masks[0])], np.random.default_rng(seed), aug, spacing)
        assert len(reordered[-1]) == 0
        for a, b in zip(first, reordered[-2::-1]):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="at most 8"):
        augment(masks * 3, np.random.default_rng(0), aug)


def test_upsampling_is_the_inverse_of_the_block_grid():
    coarse = np.zeros((3, 3, 2), bool)
    coarse[1, 2, 1] = True
    up = upsample_nearest(coarse, 4, (12, 10, 7))
    assert up.shape == (12, 10, 7)
    assert up.sum() == 4 * 2 * 3 and up[4:8, 8:10, 4:7].all()


def test_split_is_by_skull_fixed_and_disjoint(tiny_data):
    skulls = load_skulls(tiny_data, 64)
    a_train, a_val = split(skulls, 0.34, seed=1)
    b_train, b_val = split(skulls, 0.34, seed=1)
    assert [s.case_id for s in a_val] == [s.case_id for s in b_val] and len(a_val) == 1
    assert not {s.case_id for s in a_train} & {s.case_id for s in a_val}
    one_train, one_val = split(skulls[:1], 0.2, 0)
    assert one_train == one_val == skulls[:1]  # one skull: an overfitting run validates on it


def test_completion_pairs_from_stored_and_new_defects(tiny_data):
    skulls = load_skulls(tiny_data, 64)
    assert len(skulls) == 3 and all(len(s.defects) == 5 for s in skulls)  # SkullBreak layout: five classes each
    assert skulls[0].complete.shape[:2] == (64, 64)
    sampler = PairSampler(skulls, "completion", Augmentation(), new_defects=0.5)
    rng = np.random.default_rng(0)
    pairs = sampler.batch(rng, 6)
    for p in pairs:
        truth = {tuple(v) for v in p.target}
        assert all(tuple(v) in truth for v in p.inputs)
        assert 0.7 * len(p.target) < len(p.inputs) < len(p.target)  # a defect, not the whole skull
    again = PairSampler(skulls, "completion", Augmentation(), new_defects=0.5).batch(np.random.default_rng(0), 6)
    assert all(np.array_equal(a.inputs, b.inputs) and np.array_equal(a.target, b.target) for a, b in zip(pairs, again))
    x, target = collate(pairs)
    assert len(x) == sum(len(p.inputs) for p in pairs) and len(target) == sum(len(p.target) for p in pairs)
    assert set(x.coords[:, 0].tolist()) == set(range(6))


def test_fixed_validation_pairs_use_stored_defects_without_augmentation(tiny_data):
    skulls = load_skulls(tiny_data, 64)
    pairs = PairSampler(skulls[:1]).fixed()
    assert len(pairs) == 5 and {p.defect for p in pairs} == {"bilateral", "frontoorbital", "parietotemporal", "random_1", "random_2"}
    assert np.array_equal(PairSampler(skulls[:1]).fixed()[2].inputs, pairs[2].inputs)


def test_super_resolution_pairs_upsample_the_coarse_skull(tiny_data):
    skulls = load_skulls(tiny_data, 128, sr_from=64)
    assert skulls[0].coarse.shape == skulls[0].complete.shape
    pair = PairSampler(skulls, "super-resolution", Augmentation.none()).draw(np.random.default_rng(0))
    x, target = collate([pair])
    dsc = dice_by_batch(x.cset, target, 1)[0]
    assert 0.4 < dsc < 0.95  # the upsampled coarse skull is a blocky version of the fine one


def test_bad_settings_are_refused(tiny_data):
    with pytest.raises(ValueError, match="coarser grid"):
        load_skulls(tiny_data, 64, sr_from=128)
    with pytest.raises(ValueError, match="resolution"):
        load_skulls(tiny_data, 100)
    with pytest.raises(ValueError, match="coarse copies"):
        PairSampler(load_skulls(tiny_data, 64), "super-resolution")


def test_dice_by_batch_counts_each_item_alone():
    pred, _ = CoordinateSet.from_coords(torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [1, 5, 5, 5]]))
    truth, _ = CoordinateSet.from_coords(torch.tensor([[0, 0, 0, 0], [1, 5, 5, 5], [1, 6, 5, 5], [1, 7, 5, 5]]))
    assert dice_by_batch(pred, truth, 3) == pytest.approx([2 / 3, 0.5, 0.0])


def test_training_crops_are_boxes_of_bone_at_every_alignment():
    """crop_pair keeps both masks inside one box of the asked size around bone, moved to start within the shift;
    a sampler with a crop draws such boxes from a whole skull."""
    from sparseskull.data.pairs import crop_pair

    rng = np.random.default_rng(0)
    target = np.argwhere(np.ones((40, 40, 40), bool))
    inputs = target[::2]
    for _ in range(20):
        t, x = crop_pair(target, inputs, 16, rng, shift=8)
        lo, hi = t.min(axis=0), t.max(axis=0)
        assert np.all(lo >= 0) and np.all(hi < 16 + 8) and np.all(hi - lo < 16) and len(x) > 0  # the box starts within the shift
        assert set(map(tuple, x)) <= set(map(tuple, t))  # the input's box is the target's box
    # centred on the target voxel nearest the asked centre
    t, _ = crop_pair(target, inputs, 8, rng, shift=0, centre=np.array([100, 100, 100]))
    assert len(t) == 5**3  # the corner voxel (39, 39, 39): a box [35, 43) per axis, of which [35, 40) is in the volume


def test_a_cropping_sampler_draws_boxes_of_the_same_skull(tiny_data):
    """With a crop, each super-resolution pair is a box of at most the crop's size holding bone; its input is the
    upsampled coarse skull of the same place (a blocky copy of the target: DSC between 0.4 and 0.95); the same
    generator draws the same box (resume stays exact)."""
    skulls = load_skulls(tiny_data, 128, sr_from=64)
    sampler = PairSampler(skulls, "super-resolution", Augmentation(), crop=32)
    for seed in range(5):
        pair = sampler.draw(np.random.default_rng(seed))
        extent = pair.target.max(axis=0) - pair.target.min(axis=0)
        assert len(pair.target) > 100 and np.all(extent < 32) and np.all(pair.target.min(axis=0) >= 0) and np.all(pair.target.max(axis=0) < 32 + 8)
        x, target = collate([pair])
        assert 0.4 < dice_by_batch(x.cset, target, 1)[0] < 0.95
    again = sampler.draw(np.random.default_rng(4))
    assert np.array_equal(again.target, pair.target) and np.array_equal(again.inputs, pair.inputs)
    with pytest.raises(ValueError, match="at least 16"):
        PairSampler(skulls, "super-resolution", crop=8)


def test_boxes_around_the_defect_hold_the_missing_bone(tiny_data):
    """With ``crop_at="defect"`` (a refinement network's training) every completion box is centred on the missing bone:
    the box holds most of it, whatever the defect's class and the augmentation; the validation pairs are the missing
    bone's box with a rim of context, as the pipeline's refinement box; super-resolution has no defect to centre on."""
    from sparseskull.data.pairs import VALIDATION_BOX_MARGIN, _rows_in

    skulls = load_skulls(tiny_data, 128)
    crop = 48
    sampler = PairSampler(skulls, "completion", Augmentation(), crop=crop, crop_at="defect")
    for seed in range(8):
        pair = sampler.draw(np.random.default_rng(seed))
        missing = pair.target[~_rows_in(pair.target, pair.inputs)]
        assert np.all(pair.target.max(axis=0) - pair.target.min(axis=0) < crop) and len(missing) > 0
        # the missing bone's middle within an eighth of the box (plus the shift) of the box's middle
        middle = (missing.min(axis=0) + missing.max(axis=0)) / 2
        assert np.all(np.abs(middle - (crop / 2 + 4)) <= crop / 8 + 4 + 2), (middle, pair.defect)
    for pair in PairSampler(skulls, "completion", crop_at="defect").fixed(0):
        missing = pair.target[~_rows_in(pair.target, pair.inputs)]
        assert len(missing) > 0 and np.all(missing.min(axis=0) <= VALIDATION_BOX_MARGIN)  # the rim, or less at the grid's edge
        assert np.all(pair.target.max(axis=0) - missing.max(axis=0) <= VALIDATION_BOX_MARGIN)
    with pytest.raises(ValueError, match="boxes around the defect are for completion"):
        PairSampler(skulls, "super-resolution", crop=32, crop_at="defect")
    with pytest.raises(ValueError, match="crop_at must be one of"):
        PairSampler(skulls, crop=32, crop_at="implant")


def test_rows_in_is_a_set_membership():
    from sparseskull.data.pairs import _rows_in

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 12, (300, 3)), rng.integers(0, 12, (200, 3))
    expected = np.array([tuple(r) in set(map(tuple, b)) for r in a])
    assert np.array_equal(_rows_in(a, b), expected) and expected.any() and not expected.all()
