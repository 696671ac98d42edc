"""Defects of every SkullBreak class, exact implant arithmetic, and the synthetic CT."""

from __future__ import annotations

import numpy as np
import pytest
from sparseskull.data.anatomy import braincase_centre
from sparseskull.data.synth.ct import synthesize_ct
from sparseskull.data.synth.defects import (
    DEFECT_CLASSES,
    BonePoints,
    cut,
    cut_random_defect,
    random_defect_shape,
)
from sparseskull.data.synth.skull import to_skull_frame
from sparseskull.evaluation.metrics import dice
from sparseskull.implant.skull import NoBoneError, largest_component, skull_mask_from_ct


@pytest.fixture(scope="module")
def defects_128(skull_128):
    points = BonePoints.of(skull_128.mask)
    rng = np.random.default_rng(5)
    return {cls: [cut_random_defect(points, cls, rng, skull_128.shape.centre_lps) for _ in range(4)] for cls in DEFECT_CLASSES}


@pytest.mark.parametrize("cls", DEFECT_CLASSES)
def test_implant_is_exactly_complete_minus_defective(skull_128, defects_128, cls):
    complete = skull_128.mask.array
    for d in defects_128[cls]:
        implant, defective = d.implant.array, d.defective.array
        assert implant.dtype == bool and defective.dtype == bool
        assert np.array_equal(implant, complete & ~defective)
        assert not (implant & defective).any()
        assert np.array_equal(implant | defective, complete)
        assert d.implant.same_grid(skull_128.mask) and d.defective.same_grid(skull_128.mask)
        fraction = implant.sum() / complete.sum()
        assert 0.02 <= fraction <= 0.25, f"{cls}: the implant holds {fraction:.1%} of the bone"


@pytest.mark.parametrize("cls", DEFECT_CLASSES)
def test_defect_sizes_are_like_craniotomies(skull_128, defects_128, cls):
    """SkullFix implants hold 26-72 cm^3 (0.20M-0.56M voxels of 0.13 mm^3); SkullBreak's range wider."""
    for d in defects_128[cls]:
        cm3 = d.implant.array.sum() * d.implant.voxel_volume_mm3 / 1000
        assert 8 <= cm3 <= 140, f"{cls}: {cm3:.1f} cm^3"


def _implant_centroid_in_skull_frame(skull, defect) -> np.ndarray:
    return to_skull_frame(skull.shape, defect.implant.centroid_lps()[None])[0]


def test_defect_classes_sit_where_their_names_say(skull_128, defects_128):
    shape = skull_128.shape
    for d in defects_128["bilateral"]:
        c = _implant_centroid_in_skull_frame(skull_128, d)
        lr = to_skull_frame(shape, d.implant.index_to_lps(np.argwhere(d.implant.array)))[:, 0]
        assert c[2] > 0.4 * shape.height, "bilateral defects are on top of the head"
        assert (lr < -20).any() and (lr > 20).any(), "bilateral defects cross the midline"
    for d in defects_128["frontoorbital"]:
        c = _implant_centroid_in_skull_frame(skull_128, d)
        assert c[1] < -0.6 * shape.half_length, "frontoorbital defects are in the frontal bone"
        assert c[2] < 0.5 * shape.height, "frontoorbital defects reach down towards the orbits"
    for d in defects_128["parietotemporal"]:
        c = _implant_centroid_in_skull_frame(skull_128, d)
        assert abs(c[0]) > 0.6 * shape.half_width and abs(c[0]) > abs(c[1]), "parietotemporal defects are on the side"
    for cls in ("random_1", "random_2"):
        for d in defects_128[cls]:
            c = _implant_centroid_in_skull_frame(skull_128, d)
            assert c[2] > 0, f"{cls} defects are in the vault, above the skull base"
    assert all(len(d.shape.lobes) == 1 for d in defects_128["random_1"])
    assert all(len(d.shape.lobes) >= 2 for d in defects_128["random_2"])


def test_defects_are_physical_the_same_cut_on_two_resolutions_removes_the_same_volume():
    from sparseskull.data.synth.skull import generate_skull

    fine, coarse = generate_skull(8, size=256), generate_skull(8, size=128)
    shape = random_defect_shape("parietotemporal", fine.shape.centre_lps, np.random.default_rng(0))
    v_fine = cut(fine.mask, shape).implant.array.sum() * fine.mask.voxel_volume_mm3
    v_coarse = cut(coarse.mask, shape).implant.array.sum() * coarse.mask.voxel_volume_mm3
    assert v_fine > 5000
    assert abs(v_fine - v_coarse) / v_fine < 0.15, (v_fine, v_coarse)


def test_braincase_centre_estimate_is_close_to_the_truth(skull_128):
    err = np.linalg.norm(braincase_centre(skull_128.mask) - skull_128.shape.centre_lps)
    assert err < 15.0, f"estimated centre {err:.1f} mm away"


def test_unknown_class_and_empty_skull_are_refused(skull_128):
    with pytest.raises(ValueError, match="unknown defect class"):
        random_defect_shape("occipital", (0, 0, 0), np.random.default_rng(0))
    empty = skull_128.mask.with_array(np.zeros(skull_128.mask.shape, dtype=bool))
    with pytest.raises(ValueError, match="empty"):
        cut_random_defect(empty, "bilateral", np.random.default_rng(0))


@pytest.fixture(scope="module")
def ct_case():
    from sparseskull.data.synth.skull import generate_skull

    skull = generate_skull(21, size=256)
    defect = cut_random_defect(skull.mask, "bilateral", np.random.default_rng(3), skull.shape.centre_lps)
    return skull, defect, synthesize_ct(defect.defective, seed=21, envelope=skull.mask)


@pytest.mark.slow
def test_ct_has_hounsfield_values_of_each_tissue(ct_case):
    skull, defect, ct = ct_case
    hu = ct.array
    assert hu.dtype == np.int16 and ct.same_grid(skull.mask)
    bone = defect.defective.array
    core = bone & ~np.logical_xor(bone, np.roll(bone, 1, 0)) & ~np.logical_xor(bone, np.roll(bone, -1, 0))
    assert 700 <= np.median(hu[core]) <= 1800
    assert np.percentile(hu[bone], 99) <= 1800 + 100  # tables top out at 1800 HU plus noise
    assert abs(np.median(hu[0:8, 0:8, :]) - (-1000)) <= 30, "air"
    c = np.rint(skull.mask.lps_to_index(skull.shape.centre_lps[None])[0]).astype(int)
    brain = hu[c[0] - 5 : c[0] + 5, c[1] - 5 : c[1] + 5, c[2] - 2 : c[2] + 3]
    assert 15 <= np.median(brain) <= 50, "brain"
    # soft tissue, not air, covers the defect (the scalp over a craniectomy)
    assert np.median(hu[defect.implant.array]) > -100


def test_threshold_recovers_the_skull_and_drops_the_table(ct_case):
    skull, defect, ct = ct_case
    raw = ct.array >= 300
    mask = skull_mask_from_ct(ct, 300.0)
    assert (raw & ~mask.array).sum() > 1000, "the table should pass the threshold and be removed"
    assert dice(mask.array, defect.defective.array) > 0.9
    assert not (mask.array & defect.implant.array).any() or (mask.array & defect.implant.array).sum() < 0.02 * defect.implant.array.sum()


def test_largest_component_keeps_the_biggest_26_connected_piece_wherever_it_lies_in_the_grid():
    mask = np.zeros((20, 30, 25), dtype=bool)
    mask[2:6, 3:8, 20:25] = True  # 100 voxels at the grid's far edge
    mask[6, 8, 19] = True  # touches it at a corner only: 26-connected, 101 voxels
    mask[12:18, 20:24, 2:7] = True  # 120 voxels: the largest
    mask[0, 29, 0] = True  # a speck in the grid's corner widens the box to the whole grid
    kept = largest_component(mask)
    assert kept.shape == mask.shape and kept.sum() == 120 and kept[12:18, 20:24, 2:7].all()
    mask[2:6, 3:8, 15:20] = True  # the first piece grows to 201 voxels and wins
    kept = largest_component(mask)
    assert kept.sum() == 201 and kept[6, 8, 19] and not kept[0, 29, 0] and not kept[12:18, 20:24, 2:7].any()
    lone = np.zeros((9, 9, 9), dtype=bool)
    lone[8, 8, 8] = True
    assert np.array_equal(largest_component(lone), lone)
    assert not largest_component(np.zeros((4, 5, 6), dtype=bool)).any()


def test_ct_without_bone_is_refused_clearly(ct_case):
    _, _, ct = ct_case
    soft = ct.with_array(np.clip(ct.array, None, 80).astype(np.int16))
    with pytest.raises(NoBoneError, match="bone threshold"):
        skull_mask_from_ct(soft)


def test_ct_is_deterministic_for_a_seed(skull_128):
    a = synthesize_ct(skull_128.mask, seed=4)
    b = synthesize_ct(skull_128.mask, seed=4)
    assert np.array_equal(a.array, b.array)
