"""Reading and writing volumes with their geometry: sparseskull.data.io and sparseskull.data.volume."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import sparseskull.data.io as sio
from sparseskull.data.io import (
    VolumeReadError,
    looks_like_mask,
    read_mask,
    read_volume,
    swap_first_last_axes,
    write_volume,
)
from sparseskull.data.volume import Volume

SHAPE = (20, 17, 9)
SPACING = (0.45, 0.45, 0.63)
ORIGIN = (-117.3456, -241.8512, 1187.6123)
FORMATS = (".nrrd", ".mha", ".nii.gz")

# NRRD and MHA write doubles as decimal text: geometry comes back to 1e-6 mm (measured: <= 1e-16).
# NIfTI-1 keeps pixdim, the qform quaternion and offset and the sform rows as float32, which round
# to 2**-24 (6e-8) relative: measured errors are 1.2e-8 on spacing, 4.4e-8 on direction and 3e-6 mm
# on an origin near 100 mm, 5e-5 mm near 1200 mm. An absolute 1e-6 mm cannot hold for origins
# beyond ~32 mm, so NIfTI is checked relatively: rtol 1e-6 (about 8 float32 steps), with atol 1e-6
# for the near-zero entries of the direction matrix.
TOLERANCE = {
    ".nrrd": dict(rtol=0.0, atol=1e-6),
    ".mha": dict(rtol=0.0, atol=1e-6),
    ".nii.gz": dict(rtol=1e-6, atol=1e-6),
}

# DICOM stores positions, orientations and spacings as decimal strings (DS) of at most 16
# characters; written with as many digits as fit, a value under 10^4 mm keeps >= 10 decimals, so
# each is within 5e-11 of the truth. 1e-9 leaves room for the slice spacing, which the reader
# derives from differences of slice positions (measured: <= 8e-13).
DICOM_TOLERANCE = dict(rtol=0.0, atol=1e-9)

# Real SkullFix case 000: gantry tilt about x, written with 5 decimals in its NRRD header.
CASE_000_DIRECTIONS = np.array([[1.0, 0.0, 0.0], [0.0, 0.98769, -0.15643], [0.0, 0.15643, 0.98769]]).T
CASE_000_SPACING = (0.4512, 0.4512, 0.633)


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


GANTRY_TILT = rotation((1, 0, 0), 9.0)
GENERAL = rotation((0.3, -0.5, 0.8), 40.0)
DIRECTIONS = {"tilt9": GANTRY_TILT, "general": GENERAL}


def ct_array(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 3072, size=shape).astype(np.int16)


def mask_array(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < 0.3


def volume(array: np.ndarray, direction=GANTRY_TILT, spacing=SPACING, origin=ORIGIN) -> Volume:
    return Volume(array, spacing, origin, direction)


def assert_geometry(got: Volume, want: Volume, rtol: float, atol: float) -> None:
    np.testing.assert_allclose(got.spacing_mm, want.spacing_mm, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.origin_lps, want.origin_lps, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.direction, want.direction, rtol=rtol, atol=atol)


def write_nrrd(path: Path, array, directions, origin, encoding="raw", space="left-posterior-superior") -> Path:
    """A NRRD written by hand; ``directions`` holds the scaled axis vectors as columns."""
    nrrd_type = {np.dtype(np.int16): "short", np.dtype(np.int32): "int"}[array.dtype]
    vectors = " ".join("(" + ",".join(repr(float(x)) for x in column) + ")" for column in np.asarray(directions).T)
    header = (
        "NRRD0004\n"
        f"type: {nrrd_type}\n"
        "dimension: 3\n"
        f"space: {space}\n"
        f"sizes: {' '.join(map(str, array.shape))}\n"
        f"space directions: {vectors}\n"
        "kinds: domain domain domain\n"
        "endian: little\n"
        f"encoding: {encoding}\n"
        f"space origin: ({','.join(repr(float(o)) for o in origin)})\n\n"
    )
    fastest_first = array.ravel(order="F")
    raw = fastest_first.astype(array.dtype.newbyteorder("<")).tobytes()
    body = {
        "raw": raw,
        "gzip": gzip.compress(raw),
        "ascii": (" ".join(map(str, fastest_first)) + "\n").encode(),
    }[encoding]
    path.write_bytes(header.encode() + body)
    return path


def nrrd_header(path: Path) -> str:
    data = path.read_bytes()
    return data[: data.index(b"\n\n")].decode()


def decimal_string(values) -> str:
    """DICOM DS: each number in at most 16 characters, with as many digits as fit."""
    out = []
    for value in values:
        text = next(t for t in (f"{value:.{n}g}" for n in range(16, 0, -1)) if len(t) <= 16)
        out.append(text)
    return "\\".join(out)


def write_dicom_series(vol: Volume, folder: Path, seed: int = 0) -> Path:
    """One CT file per k-slice, as SimpleITK's DicomSeriesFromArray example; file names shuffled."""
    folder.mkdir()
    image = sitk.GetImageFromArray(np.ascontiguousarray(vol.array.transpose(2, 1, 0)))
    image.SetSpacing(vol.spacing_mm)
    series_uid = "1.2.826.0.1.3680043.2.1125.1.4242"
    orientation = decimal_string(np.concatenate([vol.direction[:, 0], vol.direction[:, 1]]))
    slice_step = vol.direction[:, 2] * vol.spacing_mm[2]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    names = np.random.default_rng(seed).permutation(vol.shape[2])
    for k in range(vol.shape[2]):
        slice_image = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": decimal_string(np.asarray(vol.origin_lps) + k * slice_step),
            "0020|0037": orientation,
            "0028|0030": decimal_string([vol.spacing_mm[1], vol.spacing_mm[0]]),
            "0018|0050": decimal_string([vol.spacing_mm[2]]),
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{names[k]:03d}.dcm"))
        writer.Execute(slice_image)
    return folder


def read_error(path: Path) -> str:
    with pytest.raises(VolumeReadError) as info:
        read_volume(path)
    message = str(info.value)
    assert str(path) in message
    return message


def reason(message: str) -> str:
    """The REASON of a 'PATH: not a readable 3D image (REASON)' message."""
    match = re.search(r"\((.*)\)\s*$", message, flags=re.DOTALL)
    assert match, message
    return match.group(1)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
@pytest.mark.parametrize("suffix", FORMATS)
def test_ct_round_trip_keeps_values_and_oblique_anisotropic_geometry(tmp_path, suffix, direction):
    original = volume(ct_array(), direction)
    back = read_volume(write_volume(original, tmp_path / f"ct{suffix}"))
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, original.array)
    assert_geometry(back, original, **TOLERANCE[suffix])


@pytest.mark.parametrize("suffix", FORMATS)
def test_mask_round_trip_is_uint8_and_read_mask_gives_bool(tmp_path, suffix):
    original = volume(mask_array(), GENERAL)
    path = write_volume(original, tmp_path / f"mask{suffix}")
    back = read_volume(path)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, original.array.astype(np.uint8))
    mask = read_mask(path)
    assert mask.array.dtype == bool
    np.testing.assert_array_equal(mask.array, original.array)
    assert_geometry(mask, original, **TOLERANCE[suffix])


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint16, np.uint8, bool, np.float32, np.float64, ">i2"])
@pytest.mark.parametrize("read_only", [False, True])
def test_swap_first_last_axes_is_a_contiguous_transposed_copy_for_every_voxel_type(dtype, read_only):
    source = (np.arange(5 * 6 * 7).reshape(5, 6, 7) % 11).astype(dtype)
    source.flags.writeable = not read_only  # ITK's buffer, viewed, is read-only
    out = swap_first_last_axes(source)
    assert out.shape == (7, 6, 5) and out.dtype == source.dtype and out.flags.c_contiguous and out.flags.writeable
    for i, j, k in [(0, 0, 0), (6, 5, 4), (3, 2, 1), (1, 4, 2)]:
        assert out[i, j, k] == source[k, j, i]
    out[0, 0, 0] = 1  # a copy: the source is untouched
    assert source[0, 0, 0] == 0


@pytest.mark.parametrize("tile", [1, 3, 4, 32])
def test_swap_first_last_axes_in_tiles_copies_every_voxel_across_ragged_tile_edges(tile):
    source = np.random.default_rng(0).integers(-1000, 3000, size=(9, 5, 11)).astype(np.int32)  # 9 and 11: no tile divides
    np.testing.assert_array_equal(swap_first_last_axes(source, tile=tile), source.transpose(2, 1, 0))


# --- coordinate frame ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", FORMATS)
def test_single_voxel_lands_at_its_hand_computed_lps_position(tmp_path, suffix):
    ijk = np.array([13, 4, 7])
    array = np.zeros(SHAPE, dtype=np.int16)
    array[tuple(ijk)] = 1000
    path = write_volume(volume(array, GENERAL), tmp_path / f"dot{suffix}")

    expected_lps = np.asarray(ORIGIN) + GENERAL @ (np.asarray(SPACING) * ijk)
    back = read_volume(path)
    (found,) = np.argwhere(back.array)
    np.testing.assert_array_equal(found, ijk)
    np.testing.assert_allclose(back.index_to_lps(found[None])[0], expected_lps, **TOLERANCE[suffix])

    image = sitk.ReadImage(str(path))
    assert sitk.GetArrayFromImage(image)[ijk[2], ijk[1], ijk[0]] == 1000
    sitk_lps = image.TransformIndexToPhysicalPoint([int(i) for i in ijk])
    np.testing.assert_allclose(sitk_lps, expected_lps, **TOLERANCE[suffix])


def test_lps_to_index_inverts_index_to_lps():
    vol = volume(np.zeros(SHAPE, dtype=np.int16), GENERAL)
    ijk = np.random.default_rng(3).uniform(-5, 25, size=(50, 3))
    np.testing.assert_allclose(vol.lps_to_index(vol.index_to_lps(ijk)), ijk, atol=1e-9)
    corner = np.asarray(SHAPE) - 1
    expected = np.asarray(ORIGIN) + GENERAL @ (np.asarray(SPACING) * corner)
    np.testing.assert_allclose(vol.lps_to_index(expected[None])[0], corner, atol=1e-9)


# --- the oblique headers of the real data ----------------------------------------------------


@pytest.mark.parametrize("encoding", ["raw", "gzip", "ascii"])
def test_hand_written_oblique_nrrd_gives_spacing_as_direction_norms(tmp_path, encoding):
    scaled = CASE_000_DIRECTIONS * np.asarray(CASE_000_SPACING)[None, :]
    array = np.random.default_rng(5).integers(0, 2, size=SHAPE).astype(np.int32)
    origin = (-115.2742, -103.0177, -152.6801)
    path = write_nrrd(tmp_path / "case000.nrrd", array, scaled, origin, encoding)

    vol = read_volume(path)
    norms = np.linalg.norm(scaled, axis=0)
    np.testing.assert_allclose(vol.spacing_mm, norms, rtol=0, atol=1e-12)
    assert abs(vol.spacing_mm[2] - scaled[2, 2]) > 1e-3, "the spacing is the norm, not the diagonal entry"
    np.testing.assert_allclose(vol.direction, scaled / norms[None, :], rtol=0, atol=1e-12)
    np.testing.assert_allclose(vol.origin_lps, origin, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(vol.array, array)
    ijk = np.array([[19, 16, 8], [3, 11, 5]])
    np.testing.assert_allclose(vol.index_to_lps(ijk), np.asarray(origin) + ijk @ scaled.T, atol=1e-9)


def test_ras_nrrd_is_read_in_lps(tmp_path):
    array = ct_array(shape=(4, 5, 6))
    ras = "right-anterior-superior"
    path = write_nrrd(tmp_path / "ras.nrrd", array, np.diag(SPACING), (10.0, 20.0, 30.0), space=ras)
    vol = read_volume(path)
    np.testing.assert_allclose(vol.origin_lps, (-10.0, -20.0, 30.0), atol=1e-12)
    np.testing.assert_allclose(vol.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-12)
    np.testing.assert_array_equal(vol.array, array)


# --- DICOM series ----------------------------------------------------------------------------

DICOM_DIRECTIONS = {"axial": np.eye(3), "tilt9": GANTRY_TILT, "general": GENERAL}


@pytest.mark.parametrize("direction", DICOM_DIRECTIONS.values(), ids=DICOM_DIRECTIONS.keys())
def test_dicom_series_folder_reads_with_geometry(tmp_path, direction):
    original = Volume(ct_array(shape=(20, 17, 6)), (0.4512, 0.3871, 0.633), ORIGIN, direction)
    back = read_volume(write_dicom_series(original, tmp_path / "series"))
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, original.array)
    assert_geometry(back, original, **DICOM_TOLERANCE)


def test_a_dicom_folder_is_scanned_once_for_header_and_voxels_and_again_when_it_changes(tmp_path, monkeypatch):
    """A run reads the header (refusal by size), then the voxels: the series' slice scan, which opens every file, runs
    once; a removed slice makes the next read scan again (and refuse the gap)."""
    original = Volume(ct_array(shape=(20, 17, 6)), (0.45, 0.39, 0.63), ORIGIN, np.eye(3))
    folder = write_dicom_series(original, tmp_path / "series")
    scans = []
    scan = sio._scan_dicom_series
    monkeypatch.setattr(sio, "_scan_dicom_series", lambda f: scans.append(f) or scan(f))
    assert sio.read_header(folder).size == (20, 17, 6)
    np.testing.assert_array_equal(read_volume(folder).array, original.array)
    assert len(scans) == 1
    sorted(folder.iterdir())[2].unlink()  # a slice in the middle goes missing
    assert "not evenly spaced" in read_error(folder) and len(scans) == 2


def test_single_slice_dicom_series_is_refused(tmp_path):
    folder = write_dicom_series(volume(ct_array(shape=(20, 17, 1)), np.eye(3)), tmp_path / "one")
    assert "single slice" in read_error(folder)


# --- bad input -------------------------------------------------------------------------------


def test_missing_path_is_file_not_found_naming_it(tmp_path):
    path = tmp_path / "nowhere" / "ct.nrrd"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        read_volume(path)


def test_text_file_named_nrrd_is_a_read_error(tmp_path):
    path = tmp_path / "x.nrrd"
    path.write_text("this is not an image\n")
    assert "not a readable 3D image" in read_error(path)


@pytest.mark.parametrize("suffix", [".png", ".nrrd"])
def test_2d_image_is_refused(tmp_path, suffix):
    path = tmp_path / f"flat{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((12, 10), dtype=np.uint8)), str(path))
    assert "2D" in read_error(path)


def test_4d_image_with_several_volumes_is_refused(tmp_path):
    path = tmp_path / "series4d.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 5, 6, 7), dtype=np.int16), isVector=False), str(path))
    assert "4D" in read_error(path)


def test_4d_image_with_one_volume_reads_as_3d(tmp_path):
    array = ct_array(shape=(7, 6, 5))
    path = tmp_path / "one4d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array.transpose(2, 1, 0)[None], isVector=False), str(path))
    np.testing.assert_array_equal(read_volume(path).array, array)


def test_vector_image_is_refused(tmp_path):
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6, 7, 3), dtype=np.float32), isVector=True), str(path))
    assert "3 components" in read_error(path)


def test_single_slice_volume_is_refused(tmp_path):
    path = tmp_path / "slab.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 6, 7), dtype=np.int16)), str(path))
    assert "single slice" in read_error(path)


def write_zero_spacing_nrrd(tmp_path) -> Path:
    return write_nrrd(tmp_path / "flat.nrrd", ct_array(shape=(3, 4, 5)), np.diag([0.0, 0.5, 0.5]), (0.0, 0.0, 0.0))


def test_zero_spacing_nrrd_is_a_read_error_naming_the_file(tmp_path):
    # ITK refuses a zero spacing while reading, before io.py's own spacing check can see it.
    read_error(write_zero_spacing_nrrd(tmp_path))


@pytest.mark.parametrize("case, word", [("zero_spacing", "spacing"), ("text", "imageio")])
def test_unreadable_file_error_says_why(tmp_path, case, word):
    if case == "zero_spacing":
        path = write_zero_spacing_nrrd(tmp_path)
    else:
        path = tmp_path / "x.nrrd"
        path.write_text("this is not an image\n")
    assert word in reason(read_error(path)).lower()


def test_empty_folder_has_no_dicom_series(tmp_path):
    assert "no DICOM series" in read_error(tmp_path)


def test_folder_of_non_dicom_files_has_no_dicom_series(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM\n")
    assert "no DICOM series" in read_error(tmp_path)


# --- writing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ct.png", "ct.txt", "ct", "ct.mhd", "ct.nhdr"])
def test_write_to_unusable_suffix_raises_and_leaves_no_file(tmp_path, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        write_volume(volume(ct_array()), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_no_partial_or_temporary_file(tmp_path, monkeypatch, existing):
    target = tmp_path / "ct.nrrd"
    if existing:
        target.write_bytes(b"previous content")

    def broken(_volume):
        raise RuntimeError("simulated writer failure")

    monkeypatch.setattr(sio, "volume_to_image", broken)
    with pytest.raises(RuntimeError, match="simulated writer failure"):
        write_volume(volume(ct_array()), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["ct.nrrd"] if existing else [])
    if existing:
        assert target.read_bytes() == b"previous content"


def test_masks_are_written_gzip_compressed_as_uint8(tmp_path):
    header = nrrd_header(write_volume(volume(mask_array()), tmp_path / "mask.nrrd"))
    assert "encoding: gzip" in header
    assert "type: unsigned char" in header


def test_uncompressed_write_is_raw(tmp_path):
    header = nrrd_header(write_volume(volume(ct_array()), tmp_path / "ct.nrrd", compress=False))
    assert "encoding: raw" in header


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.parametrize("suffix", FORMATS)
def test_written_files_get_normal_permissions(tmp_path, umask_022, suffix):
    path = write_volume(volume(ct_array()), tmp_path / f"ct{suffix}")
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "name",
    [
        "CT.NRRD",
        "CT.NII.GZ",
        "CT.MHA",
    ],
)
def test_upper_case_suffix_round_trips_and_leaves_only_the_target(tmp_path, name):
    original = volume(ct_array())
    path = write_volume(original, tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    np.testing.assert_array_equal(read_volume(path).array, original.array)


def test_looks_like_mask():
    assert looks_like_mask(volume(mask_array()))
    assert looks_like_mask(volume(mask_array().astype(np.int32)))
    assert not looks_like_mask(volume(ct_array()))


# --- Volume validation -----------------------------------------------------------------------

BAD_VOLUMES = {
    "2d_array": dict(array=np.zeros((4, 5))),
    "4d_array": dict(array=np.zeros((2, 3, 4, 5))),
    "zero_spacing": dict(spacing_mm=(0.5, 0.0, 0.5)),
    "negative_spacing": dict(spacing_mm=(0.5, -0.5, 0.5)),
    "nan_spacing": dict(spacing_mm=(0.5, np.nan, 0.5)),
    "two_spacings": dict(spacing_mm=(0.5, 0.5)),
    "inf_origin": dict(origin_lps=(0.0, np.inf, 0.0)),
    "scaled_direction": dict(direction=2.0 * np.eye(3)),
    "singular_direction": dict(direction=np.array([[1.0, 0, 0], [0, 1, 0], [0, 1, 0]])),
}


@pytest.mark.parametrize("fields", BAD_VOLUMES.values(), ids=BAD_VOLUMES.keys())
def test_invalid_volume_is_refused(fields):
    arguments = dict(array=np.zeros((4, 5, 6)), spacing_mm=SPACING, origin_lps=ORIGIN, direction=np.eye(3))
    arguments |= fields
    with pytest.raises(ValueError):
        Volume(**arguments)


@pytest.mark.parametrize(
    "direction",
    [np.diag([2.0, 0.5, 1.0]), np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])],
    ids=["unit_det_scaling", "unit_det_shear"],
)
def test_non_orthonormal_direction_is_refused(direction):
    with pytest.raises(ValueError):
        Volume(np.zeros((4, 5, 6)), SPACING, ORIGIN, direction)


def test_centroid_index_is_the_mean_voxel_index_and_centroid_lps_maps_it():
    rng = np.random.default_rng(7)
    array = rng.random((23, 17, 11)) < 0.2
    vol = volume(array.astype(np.uint8), GENERAL)
    np.testing.assert_allclose(vol.centroid_index(), np.argwhere(array).mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(vol.centroid_lps(), vol.index_to_lps(np.argwhere(array)).mean(axis=0), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="no non-zero voxels"):
        vol.with_array(np.zeros_like(array)).centroid_index()


def test_with_array_keeps_geometry_and_checks_shape():
    vol = volume(ct_array(), GENERAL)
    other = vol.with_array(np.ones(SHAPE, dtype=bool))
    assert other.same_grid(vol)
    assert other.array.dtype == bool
    with pytest.raises(ValueError, match="shape"):
        vol.with_array(np.zeros((20, 17, 8)))


def test_same_grid():
    vol = volume(ct_array(), GENERAL)
    shifted = volume(ct_array(), GENERAL, origin=np.asarray(ORIGIN) + (0.0, 0.1, 0.0))
    assert vol.same_grid(volume(np.zeros(SHAPE), GENERAL))
    assert not vol.same_grid(shifted)
    assert vol.same_grid(shifted, atol_mm=0.2)
    assert not vol.same_grid(volume(ct_array(), GANTRY_TILT))
    assert not vol.same_grid(volume(ct_array(), GENERAL, spacing=(0.45, 0.45, 0.64)))
    assert not vol.same_grid(volume(ct_array(shape=(20, 17, 8)), GENERAL))


def test_same_grid_honours_atol_far_from_the_origin():
    shifted = volume(ct_array(), origin=np.asarray(ORIGIN) + (0.0, 0.0, 1e-3))
    assert not volume(ct_array()).same_grid(shifted, atol_mm=1e-4)
