"""make-data writes the SkullBreak layout with coarse copies and CTs; one loader reads every layout."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from sparseskull.cli import main
from sparseskull.data.dataset import detect_layout, find_cases
from sparseskull.data.io import read_mask, read_volume
from sparseskull.data.resample import downsample_mask, downsample_to
from sparseskull.data.synth.defects import DEFECT_CLASSES
from sparseskull.data.synth.make_data import make_data


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "set"
    manifest = make_data(out, cases=2, seed=3, size=128, resolutions=(32, 64), ct="one", workers=1, progress=False)
    return out, manifest


@pytest.mark.slow
def test_make_data_writes_the_skullbreak_layout(small_set):
    out, manifest = small_set
    assert [c["id"] for c in manifest["cases"]] == ["000", "001"]
    assert json.loads((out / "cases.json").read_text()) == manifest
    for cid in ("000", "001"):
        for root in (out, out / "32", out / "64"):
            assert (root / "complete_skull" / f"{cid}.nrrd").is_file()
            for cls in DEFECT_CLASSES:
                assert (root / "defective_skull" / cls / f"{cid}.nrrd").is_file()
                assert (root / "implant" / cls / f"{cid}.nrrd").is_file()
    # one CT per case, the class cycling with the case index
    assert (out / "ct" / DEFECT_CLASSES[0] / "000.nrrd").is_file()
    assert (out / "ct" / DEFECT_CLASSES[1] / "001.nrrd").is_file()
    assert not any(p.name.startswith(".") for p in out.rglob("*")), "temporary files left behind"


def test_written_cases_keep_exact_implant_arithmetic_at_every_resolution(small_set):
    out, _ = small_set
    for res in (None, 32, 64):
        for case in find_cases(out, res):
            complete, defective, implant = read_mask(case.complete), read_mask(case.defective), read_mask(case.implant)
            assert complete.same_grid(defective) and complete.same_grid(implant)
            assert np.array_equal(implant.array, complete.array & ~defective.array), case.name
            assert implant.array.any()


def test_coarse_copies_are_the_paper_sizes_and_overlay_the_full_grid(small_set):
    out, _ = small_set
    full = read_mask(out / "complete_skull" / "000.nrrd")
    z = full.shape[2]
    for res, factor in ((64, 2), (32, 4)):
        coarse = read_mask(out / str(res) / "complete_skull" / "000.nrrd")
        assert coarse.shape == (res, res, -(-z // factor))
        assert np.allclose(coarse.spacing_mm, np.array(full.spacing_mm) * factor, atol=1e-6)
        # a coarse voxel's centre is the centre of its block of fine voxels
        block_centre = full.index_to_lps(np.array([[(factor - 1) / 2] * 3]))
        assert np.allclose(coarse.index_to_lps(np.zeros((1, 3))), block_centre, atol=1e-5)
        assert np.allclose(coarse.direction, full.direction, atol=1e-6)


def test_ct_matches_its_defective_skull(small_set):
    out, _ = small_set
    case = next(c for c in find_cases(out) if c.ct is not None)
    ct, defective = read_volume(case.ct), read_mask(case.defective)
    assert ct.same_grid(defective)
    assert ct.array.dtype == np.int16
    assert np.median(ct.array[defective.array]) > 600


def test_make_data_refuses_to_overwrite_a_data_set(small_set):
    out, _ = small_set
    with pytest.raises(FileExistsError):
        make_data(out, cases=1, size=128, resolutions=(64,), workers=1, progress=False)


def test_loader_reads_skullfix_skullbreak_and_complete_only_layouts(small_set, tmp_path):
    out, _ = small_set
    cases = find_cases(out)
    assert detect_layout(out) == "skullbreak"
    assert len(cases) == 2 * len(DEFECT_CLASSES)
    assert {c.defect_class for c in cases} == set(DEFECT_CLASSES)
    assert len(find_cases(out, classes=("bilateral",))) == 2

    fix = tmp_path / "skullfix"
    for sub in ("complete_skull", "defective_skull", "implant"):
        (fix / sub).mkdir(parents=True)
    for cid in ("000", "001"):
        shutil.copy(out / "complete_skull" / f"{cid}.nrrd", fix / "complete_skull" / f"{cid}.nrrd")
        shutil.copy(out / "defective_skull" / "random_1" / f"{cid}.nrrd", fix / "defective_skull" / f"{cid}.nrrd")
        shutil.copy(out / "implant" / "random_1" / f"{cid}.nrrd", fix / "implant" / f"{cid}.nrrd")
    fixed = find_cases(fix)
    assert detect_layout(fix) == "skullfix"
    assert [(c.case_id, c.defect_class) for c in fixed] == [("000", None), ("001", None)]
    assert all(c.complete and c.implant for c in fixed)

    # a complete skull added without a defective one (generated skulls mixed into a SkullFix folder) is a case too:
    # training cuts its defects on the fly
    shutil.copy(out / "complete_skull" / "001.nrrd", fix / "complete_skull" / "gen000.nrrd")
    mixed = find_cases(fix)
    assert [(c.case_id, c.defective is None) for c in mixed] == [("000", False), ("001", False), ("gen000", True)]
    from sparseskull.data.pairs import load_skulls

    skulls = load_skulls(fix, 64)
    assert [s.case_id for s in skulls] == ["000", "001", "gen000"] and [len(s.defects) for s in skulls] == [1, 1, 0]

    only = tmp_path / "only"
    shutil.copytree(out / "complete_skull", only / "complete_skull")
    assert detect_layout(only) == "complete-only"
    assert [c.defective for c in find_cases(only)] == [None, None]


def test_loader_errors_name_the_folder_and_what_is_missing(small_set, tmp_path):
    out, _ = small_set
    with pytest.raises(FileNotFoundError, match="not a skull data set"):
        find_cases(tmp_path)
    with pytest.raises(FileNotFoundError, match="no copy at resolution 128"):
        find_cases(out, 128)
    assert find_cases(out, 512) == find_cases(out)


def test_downsampling_keeps_nesting_and_refuses_odd_sizes(skull_128):
    complete = skull_128.mask
    inner = complete.with_array(complete.array & (np.indices(complete.shape)[2] % 3 == 0))
    for f in (2, 4):
        assert not (downsample_mask(inner, f).array & ~downsample_mask(complete, f).array).any()
    with pytest.raises(ValueError, match="multiple"):
        downsample_to(complete, 48)


def test_cli_make_data_and_help(tmp_path, capsys):
    assert main(["make-data", str(tmp_path / "d"), "--cases", "1", "--size", "128", "--resolutions", "64", "--ct", "none", "--workers", "1"]) == 0
    assert (tmp_path / "d" / "64" / "complete_skull" / "000.nrrd").is_file()
    assert main(["make-data", str(tmp_path / "d"), "--cases", "1", "--size", "128"]) == 1
    assert "already holds a data set" in capsys.readouterr().err
    assert main(["make-data", str(tmp_path / "e"), "--cases", "1", "--size", "128", "--resolutions", "100"]) == 1
    assert main([]) == 2


@pytest.mark.slow
def test_make_data_full_size_two_cases_within_a_minute(tmp_path):
    """`sparseskull make-data /tmp/d --cases 2 --seed 0` at full size: the whole layout, in about a minute."""
    t0 = time.perf_counter()
    assert main(["make-data", str(tmp_path / "d"), "--cases", "2", "--seed", "0"]) == 0
    seconds = time.perf_counter() - t0
    cases = find_cases(tmp_path / "d")
    assert len(cases) == 10
    assert read_mask(cases[0].complete).shape[:2] == (512, 512)
    # the target is < 60 s on 2 idle cores (about 45 s measured); a busy machine gets twice that
    assert seconds < 120.0, f"make-data took {seconds:.1f} s"


def test_pyramid_counts_blocks_exactly_like_a_direct_block_sum(rng):
    from sparseskull.data.resample import downsample_pyramid
    from sparseskull.data.volume import Volume

    a = rng.random((37, 29, 21)) < 0.4  # odd sizes: the last blocks are padded with zeros
    mask = Volume(a, (0.5, 0.5, 0.8), (1.0, 2.0, 3.0))
    pyramid = downsample_pyramid(mask, [1, 2, 4, 8])
    assert np.array_equal(pyramid[1].array, a)
    for f in (2, 4, 8):
        padded = np.pad(a, [(0, (-n) % f) for n in a.shape])
        s = [n // f for n in padded.shape]
        direct = padded.reshape(s[0], f, s[1], f, s[2], f).sum(axis=(1, 3, 5)) >= 0.5 * f**3
        assert np.array_equal(pyramid[f].array, direct), f
    with pytest.raises(ValueError, match="powers of two"):
        downsample_pyramid(mask, [3])


def test_coarse_cache_is_keyed_by_content_so_a_moved_or_touched_mask_still_finds_its_copy(tmp_path, monkeypatch):
    import os

    from sparseskull.data import pairs
    from sparseskull.data.io import write_volume
    from sparseskull.data.volume import Volume

    monkeypatch.setenv("SPARSESKULL_CACHE", str(tmp_path / "cache"))
    mask = np.zeros((64, 64, 16), bool)
    mask[10:40, 12:50, 4:12] = True
    first = write_volume(Volume(mask, (0.5, 0.5, 1.0)), tmp_path / "a" / "skull.nrrd")
    expected = np.asarray(downsample_to(read_mask(first), 32).array)
    assert np.array_equal(np.asarray(pairs.read_at(first, 32).array), expected)  # read, downsampled, cached

    moved = tmp_path / "b" / "renamed.nrrd"
    moved.parent.mkdir()
    shutil.copyfile(first, moved)
    os.utime(moved, (time.time() + 3600, time.time() + 3600))  # a re-mounted copy: another path, another time
    monkeypatch.setattr(pairs, "downsample_to", lambda *a, **k: pytest.fail("the cached copy was not found"))
    assert np.array_equal(np.asarray(pairs.read_at(moved, 32).array), expected)

    other = Volume(~mask, (0.5, 0.5, 1.0))  # another content at the same path: not the old copy
    write_volume(other, first)
    monkeypatch.undo()
    monkeypatch.setenv("SPARSESKULL_CACHE", str(tmp_path / "cache"))
    assert np.array_equal(np.asarray(pairs.read_at(first, 32).array), np.asarray(downsample_to(other, 32).array))


def test_block_fraction_is_each_blocks_share_of_bone_for_any_factors_and_sizes(rng):
    from sparseskull.data.resample import block_fraction

    for shape, factors in [((7, 9, 5), 2), ((16, 16, 16), 4), ((10, 11, 13), (2, 3, 1)), ((5, 5, 5), 1), ((9, 8, 7), (4, 4, 2)),
                           ((20, 20, 20), (8, 8, 4))]:  # 256 voxels a block: past uint8's counts
        f = (factors,) * 3 if isinstance(factors, int) else factors
        mask = rng.random(shape) > (0.0 if shape == (20, 20, 20) else 0.6)  # the last one solid: full blocks count 256
        counts = np.zeros([-(-n // k) for n, k in zip(shape, f)])
        for i, j, k in np.argwhere(mask):  # each bone voxel counts in its block: the definition, voxel by voxel
            counts[i // f[0], j // f[1], k // f[2]] += 1
        got = block_fraction(mask, factors)
        assert got.dtype == np.float64 and np.array_equal(got, counts / np.prod(f)), (shape, factors)


def test_block_max_is_the_max_over_each_block_for_any_factors_and_sizes(rng):
    from sparseskull.data.resample import block_max

    for shape, factors in [((7, 9, 5), 2), ((16, 16, 16), 4), ((10, 11, 13), (2, 3, 1)), ((5, 5, 5), 1), ((9, 8, 7), (4, 4, 2))]:
        f = (factors,) * 3 if isinstance(factors, int) else factors
        for dtype in (bool, np.uint8):
            mask = (rng.random(shape) > 0.8).astype(dtype)
            expected = np.zeros([-(-n // k) for n, k in zip(shape, f)], dtype)
            for i, j, k in np.argwhere(mask):  # each voxel raises its block: the definition, voxel by voxel
                expected[i // f[0], j // f[1], k // f[2]] = max(expected[i // f[0], j // f[1], k // f[2]], mask[i, j, k])
            got = block_max(mask, factors)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), (shape, factors, dtype)
