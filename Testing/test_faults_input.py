"""Bad input and faults, through `sparseskull complete` as a user meets them (issue 22).

Each case asserts what the product must do: exit code 1, one line on stderr that names the file and says what to
do, and nothing left on disk (no output folder, no hidden staging folder); or, for input a user rightly expects to
work (a 0/255 mask, a path with spaces and accents, a CT with NaN outside the scan circle), that it works. Sizes and
memory are refused from the image header, before a voxel is read, so a huge file is refused in seconds.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from sparseskull.data.io import read_header, read_mask, write_volume
from sparseskull.data.sample import load_sample, sample_dir
from sparseskull.data.volume import Volume
from sparseskull.implant.options import CompleteOptions, InputError
from sparseskull.implant.pipeline import check_header, needed_memory_bytes, planned_stages

CT = sample_dir() / "ct.nrrd"
# these runs are about input and output, not the implant: one pass of the faster completion model, no super-resolution
# stage (a --model after FAST overrides it)
FAST_MODEL = "skullfix-skip-ch1-128"
FAST = ["--no-preview", "--threads", "1", "--passes", "1", "--model", FAST_MODEL]
FAST_STAGES = len(planned_stages(CompleteOptions(model=FAST_MODEL)))  # the progress lines' count for FAST's runs (8)


@pytest.fixture(scope="module")
def sample():
    return load_sample()


def _complete(cwd: Path, *args, preexec_fn=None) -> subprocess.CompletedProcess:
    exe = shutil.which("sparseskull")
    assert exe, "pip install -e ."
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([exe, "complete", *map(str, args)], capture_output=True, encoding="utf-8", cwd=cwd, env=env,
                          preexec_fn=preexec_fn)  # utf-8: a library in this process may have set the C locale


def _error_line(run: subprocess.CompletedProcess) -> str:
    """The one line the user sees: the run's last stderr line (the stage lines before it are progress)."""
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert lines and "Traceback" not in run.stderr, run.stderr
    return lines[-1]


def _refused(tmp_path: Path, source, *words, args=()) -> str:
    """Run on ``source``, expect a refusal: exit 1, one error line naming ``source`` and holding ``words``, nothing left."""
    out = tmp_path / "out"
    run = _complete(tmp_path, source, "--out", out, *FAST, *args)
    assert run.returncode == 1, (run.stdout, run.stderr)
    line = _error_line(run)
    assert line.startswith("sparseskull complete: error: ") and str(source) in line, line
    for word in words:
        assert word in line, (word, line)
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".")], list(out.parent.iterdir())
    return line


def _nrrd(path: Path, array: np.ndarray, spacings: str) -> Path:
    """A raw NRRD with the ``spacings`` field as written (NaN, 0 or negative), which SimpleITK's writer cannot make."""
    header = (f"NRRD0004\ntype: short\ndimension: 3\nsizes: {' '.join(map(str, array.shape))}\nspacings: {spacings}\n"
              "encoding: raw\nendian: little\n\n")
    path.write_bytes(header.encode() + np.asarray(array, "<i2").transpose(2, 1, 0).tobytes())
    return path


# ------------------------------------------------------------------ masks and skulls that cannot be completed


def test_an_empty_mask_is_refused(tmp_path):
    mask = write_volume(Volume(np.zeros((64, 64, 48), np.uint8), (3.0, 3.0, 3.0)), tmp_path / "empty mask.nrrd")
    _refused(tmp_path, mask, "the mask is empty", "segment the skull first")


def _outline_skull() -> Volume:
    """A 156 x 156 x 96 mm hollow box, its walls one 0.6 mm voxel thick: 65 cm^3 of 'bone' in one piece (a skull
    outline, not a solid segmentation), which block-averaging to the model's 3.7 mm voxels leaves empty."""
    a = np.zeros((260, 260, 160), np.uint8)
    a[[0, -1], :, :] = a[:, [0, -1], :] = a[:, :, [0, -1]] = 1
    return Volume(a, (0.6, 0.6, 0.6))


@pytest.mark.slow
def test_a_skull_that_vanishes_on_the_model_grid_is_refused(tmp_path):
    mask = write_volume(_outline_skull(), tmp_path / "outline.nrrd")
    _refused(tmp_path, mask, "vanishes on the model's", "thinner than half a model voxel")


def test_scattered_bone_voxels_are_not_a_skull(tmp_path, rng):
    a = np.zeros((96, 96, 64), np.uint8)
    a[tuple(rng.integers(0, 64, (3, 400)))] = 1
    mask = write_volume(Volume(a, (2.0, 2.0, 2.0)), tmp_path / "specks.nrrd")
    _refused(tmp_path, mask, "does not look like a skull")


# ------------------------------------------------------------------ geometry in the header


@pytest.mark.parametrize("spacings, words", [("nan 1 1", ["[nan, 1.0, 1.0]", "fix the spacing"]),
                                             ("0 1 1", ["spacing (0) invalid"])], ids=["nan", "zero"])
def test_unknown_or_zero_spacing_is_refused(tmp_path, spacings, words):
    """NRRD's ``nan`` spacing means unknown, and ITK would read it as 1 mm: an implant of the wrong size. ITK itself
    refuses a zero spacing while reading the header."""
    _refused(tmp_path, _nrrd(tmp_path / "ct.nrrd", np.zeros((16, 16, 8)), spacings), *words)


def test_negative_spacing_is_a_flipped_axis_and_reads(tmp_path):
    """ITK reads a negative NRRD spacing as a flipped axis (positive spacing, direction -1): the geometry is the
    same, so the run goes on past the header (to the empty-mask refusal this file earns)."""
    path = _nrrd(tmp_path / "flipped.nrrd", np.zeros((16, 16, 8)), "-2 2 2")
    line = _refused(tmp_path, path, "the mask is empty")
    assert "voxel spacing" not in line and "invalid" not in line


def test_a_whole_body_extent_is_refused_from_the_header(tmp_path):
    """The extent check ran after thresholding and labelling the full grid; from the header it runs before."""
    path = tmp_path / "body.nrrd"
    shutil.copy(CT, path)
    text = path.read_bytes()
    head, body = text.split(b"\n\n", 1)
    head = b"\n".join(ln if not ln.startswith(b"space directions:") else b"space directions: (9,0,0) (0,9,0) (0,0,20)" for ln in head.split(b"\n"))
    path.write_bytes(head + b"\n\n" + body)
    line = _refused(tmp_path, path, "the image spans [2304, 2304, 2220] mm", "--max-extent")
    assert "crop it to the head" in line


def test_a_4d_image_of_several_volumes_is_refused(tmp_path):
    path = tmp_path / "series.nrrd"
    sitk.WriteImage(sitk.Image([24, 24, 16, 3], sitk.sitkInt16), str(path))
    _refused(tmp_path, path, "a 4D image of 3 volumes", "save the one CT or mask to complete as a 3D file")


# ------------------------------------------------------------------ DICOM folders


def _dicom_series(folder: Path, positions_mm, uid="1.2.826.0.1.3680043.2.1125.1.4242", first: int = 0) -> Path:
    """One CT file per slice at the given z positions (mm), with the usual tags (see test_io.write_dicom_series)."""
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, z in enumerate(positions_mm):
        image = sitk.GetImageFromArray(np.full((1, 24, 24), 40 * k, np.int16))[:, :, 0]
        for tag, value in {"0008|0060": "CT", "0020|000e": uid, "0008|0018": f"{uid}.{first + k + 1}", "0020|0013": str(k + 1),
                           "0020|0032": f"0\\0\\{z:g}", "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "1\\1", "0018|0050": "2"}.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-4:]}-{k:03d}.dcm"))
        writer.Execute(image)
    return folder


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    folder = _dicom_series(tmp_path / "missing slice", [2.0 * k for k in range(20) if k != 9])
    _refused(tmp_path, folder, "not evenly spaced", "4 mm between slices 9 and 10, against 2 mm typically", "a slice is missing")


def test_a_dicom_series_with_unequal_slice_spacing_is_refused(tmp_path):
    folder = _dicom_series(tmp_path / "unequal", [2.0 * k for k in range(10)] + [18 + 3.0 * k for k in range(1, 10)])
    _refused(tmp_path, folder, "not evenly spaced", "export the series again")


def test_two_dicom_series_mixed_in_one_folder_are_refused(tmp_path):
    """Two series of the same size (two reconstructions, say): which one is the CT cannot be guessed."""
    folder = _dicom_series(tmp_path / "mixed", [2.0 * k for k in range(12)], uid="1.2.826.0.1.3680043.2.1125.1.1111")
    _dicom_series(folder, [2.0 * k for k in range(12)], uid="1.2.826.0.1.3680043.2.1125.1.2222")
    _refused(tmp_path, folder, "2 DICOM series of 12 slices each", "into a folder of its own")


def test_two_series_interleaved_under_one_uid_are_refused(tmp_path):
    folder = _dicom_series(tmp_path / "interleaved", [2.0 * k for k in range(12)] + [2.0 * k + 0.5 for k in range(12)], first=0)
    _refused(tmp_path, folder, "not evenly spaced", "two series are mixed")


# ------------------------------------------------------------------ too big for the run, from the header


def _huge_nrrd(path: Path, size=(1100, 1100, 1000)) -> Path:
    """A valid gzip NRRD of zeros whose header claims 1.21e9 voxels (the default --max-voxels is 1e9), made cheaply:
    one 121 MB gzip member of zeros, repeated (gzip readers read concatenated members as one stream)."""
    slab = size[0] * size[1] * 100
    member = gzip.compress(bytes(slab), compresslevel=9)
    header = f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {' '.join(map(str, size))}\nspacings: 0.2 0.2 0.2\nencoding: gzip\n\n"
    with open(path, "wb") as f:
        f.write(header.encode())
        for _ in range(size[2] // 100):
            f.write(member)
    return path


def test_a_huge_volume_is_refused_from_its_header_in_seconds(tmp_path):
    path = _huge_nrrd(tmp_path / "huge.nrrd")
    assert path.stat().st_size < 2_000_000 and read_header(path).voxels == 1100 * 1100 * 1000
    t0 = time.perf_counter()
    line = _refused(tmp_path, path, "1100 x 1100 x 1000 = 1,210,000,000 voxels", "the limit of 1,000,000,000", "--max-voxels")
    assert time.perf_counter() - t0 < 15, line  # Python and the package's import included; reading would take far longer


def test_a_run_needing_more_memory_than_is_available_is_refused(tmp_path, monkeypatch):
    """The memory estimate against what the machine has (faked here: the real one varies), and the flag that skips it."""
    import sparseskull.implant.pipeline as pipeline

    header = read_header(CT)
    need = needed_memory_bytes(header)
    assert 300 * 2**20 < need < 2 * 2**30  # the 7.3 M voxel sample peaks at 829 MiB (measured: report peak_mib)
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda: need // 2)
    with pytest.raises(InputError, match=r"256 x 256 x 111 voxels need about .* GiB of memory, and .* GiB is available.*--max-voxels 0"):
        check_header(header, CompleteOptions())
    check_header(header, CompleteOptions(max_voxels=0))  # the override
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda: None)  # unknown: no check
    check_header(header, CompleteOptions())


# ------------------------------------------------------------------ the output folder


def test_an_output_path_that_is_a_file_is_refused_before_the_run(tmp_path):
    target = tmp_path / "implant.stl"
    target.write_text("a file the user keeps\n")
    run = _complete(tmp_path, CT, "--out", target, *FAST)
    assert run.returncode == 1
    line = _error_line(run)
    assert str(target) in line and "an existing file, not a folder: choose another --out" in line
    assert f"[2/{FAST_STAGES}]" not in run.stderr  # refused before the work
    assert target.read_text() == "a file the user keeps\n" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("passes", ["0", "9"])
def test_a_pass_count_out_of_range_is_refused_before_the_run(tmp_path, passes):
    out = tmp_path / "out"
    run = _complete(tmp_path, CT, "--out", out, "--no-preview", "--threads", "1", "--passes", passes)
    assert run.returncode == 1
    assert _error_line(run) == f"sparseskull complete: error: passes must be between 1 and 8; got {passes}"
    assert "[1/" not in run.stderr and not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="run as root: chmod does not stop root (os.access says writable), so a read-only "
                                               "folder cannot be made here")
def test_an_output_in_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "read only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        run = _complete(tmp_path, CT, "--out", folder / "out", *FAST)
        assert run.returncode == 1 and "cannot be written to: choose another --out" in _error_line(run)
        assert not list(folder.iterdir())
    finally:
        folder.chmod(0o755)


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: as a disk that fills up (Python ignores SIGXFSZ, so a write fails with EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
@pytest.mark.parametrize("previous", [True, False], ids=["over-a-previous-output", "new"])
def test_a_disk_that_fills_while_writing_fails_in_one_line_and_keeps_the_previous_output(tmp_path, previous):
    out = tmp_path / "out"
    if previous:
        out.mkdir()
        (out / "report.json").write_text('{"previous": true}\n')
    run = _complete(tmp_path, CT, "--out", out, *FAST, preexec_fn=_file_size_limit(64 * 1024))
    assert run.returncode == 1, run.stderr
    line = _error_line(run)
    assert f"[{FAST_STAGES}/{FAST_STAGES}] write" in run.stderr, run.stderr  # the work was done; the writing failed
    # the STL goes first, and VTK's writer says only that it failed (no errno); Python's and ITK's writers say "File too large"
    kept = "the previous outputs there are kept" if previous else "nothing was written"
    assert line == (f"sparseskull complete: error: {out}: writing the outputs failed (the STL could not be written); {kept}: "
                    "free disk space or choose another --out"), line
    if previous:
        assert [p.name for p in out.iterdir()] == ["report.json"] and json.loads((out / "report.json").read_text()) == {"previous": True}
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], list(tmp_path.iterdir())


# ------------------------------------------------------------------ input that must work


@pytest.mark.slow
def test_a_ct_with_nan_voxels_at_a_path_with_spaces_and_accents_works(tmp_path, sample):
    """NaN marks voxels outside the scanned circle in some float exports: no bone there, said in the report; and a
    folder and file name with spaces and non-ASCII letters, as users name them."""
    folder = tmp_path / "Patiënt Müller – CT kopf"
    a = np.asarray(sample.ct.array, np.float32).copy()
    a[:40, :40, :] = np.nan  # a corner, outside the head
    source = write_volume(sample.ct.with_array(a), folder / "schädel mit lücke.nrrd")
    out = folder / "Implantat ø 1"
    run = _complete(tmp_path, source, "--out", out, *FAST)
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["input"] == str(source) and report["input_kind"] == "ct" and report["nan_voxels"] == 40 * 40 * a.shape[2]
    assert any("NaN" in w for w in report["warnings"]) and report["defect_found"] and (out / "implant.stl").stat().st_size > 0


@pytest.mark.slow
def test_a_float_mask_and_a_0_255_mask_work_as_masks(tmp_path, sample):
    """A user who exports the skull as 0.0/1.0 floats or as 0/255 (image tools) means a mask: both give the implant
    the 0/1 mask gives (and not 'no bone above 300 HU', as 0/255 did when any value but 0 and 1 meant a CT)."""
    skull = np.asarray(sample.defective.array, bool)
    implants = []
    for name, array in (("float", skull.astype(np.float32)), ("255", skull.astype(np.uint8) * 255)):
        source = write_volume(sample.defective.with_array(array), tmp_path / f"skull {name}.nrrd")
        run = _complete(tmp_path, source, "--out", tmp_path / name, *FAST)
        assert run.returncode == 0, run.stderr
        assert json.loads((tmp_path / name / "report.json").read_text())["input_kind"] == "mask"
        implants.append(read_mask(tmp_path / name / "implant.nrrd").array)
    assert implants[0].sum() > 1000
    np.testing.assert_array_equal(implants[0], implants[1])


# ------------------------------------------------------------------ model files: skip connections


def _relabelled(path: Path, to: Path, **changes) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["sparseskull"])
    save_file(load_file(str(path)), str(to), metadata={"sparseskull": json.dumps({**meta, **changes})})
    return to


def test_models_with_and_without_skips_load_as_what_their_file_says(tmp_path):
    """load_model builds the network its metadata names, skips or not; the skips add no parameter, so the weights
    alone cannot tell the two apart: a file whose metadata lies about them loads as the other network (noted in the
    fault table: the checksum covers the tensors, not the metadata)."""
    import torch
    from sparseskull.nets.files import ModelInfo, load_model, save_model
    from sparseskull.nets.sparse_net import CHANNEL_PRESETS, SparseCompletionNet

    for skips in (True, False):
        torch.manual_seed(0)
        net = SparseCompletionNet("ch1", skips=skips)
        path = save_model(net, tmp_path / f"skips-{skips}.safetensors",
                          ModelInfo(CHANNEL_PRESETS["ch1"], resolution=64, spacing_mm=(3.74, 3.74, 4.98), skips=skips))
        model, info = load_model(path)
        assert model.skips is skips and info.skips is skips
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values()))
        lying, _ = load_model(_relabelled(path, tmp_path / f"lie-{skips}.safetensors", skips=not skips))
        assert lying.skips is (not skips)
    with pytest.raises(ValueError, match="info.skips True differs"):
        save_model(SparseCompletionNet("ch1"), tmp_path / "x.safetensors", ModelInfo(CHANNEL_PRESETS["ch1"], skips=True))


def test_a_model_file_with_wrong_channels_is_refused_in_one_line(tmp_path):
    from sparseskull.nets.files import ModelInfo, save_model
    from sparseskull.nets.sparse_net import CHANNEL_PRESETS, SparseCompletionNet

    path = save_model(SparseCompletionNet("ch1"), tmp_path / "m.safetensors", ModelInfo(CHANNEL_PRESETS["ch1"], resolution=64,
                                                                                         spacing_mm=(3.74, 3.74, 4.98)))
    wrong = _relabelled(path, tmp_path / "wrong channels.safetensors", channels=list(CHANNEL_PRESETS["ch2"]))
    run = _complete(tmp_path, CT, "--out", tmp_path / "out", *FAST, "--model", wrong)
    assert run.returncode == 1
    line = _error_line(run)
    assert not (tmp_path / "out").exists()
    assert str(wrong) in line and "the weights do not fit a SparseCompletionNet" in line and len(run.stderr.splitlines()) <= 2


# ------------------------------------------------------------------ the Slicer module


@pytest.mark.slow
def test_the_slicer_logic_gives_the_cores_message_for_an_outline_skull(tmp_path, monkeypatch):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install -e '.[test]')")
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SparseSkullCompletion"))
    import SparseSkullCompletion as module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = write_volume(_outline_skull(), tmp_path / "outline.nrrd")
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    try:
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(path))
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "outline")
        assert storage.ReadData(node)
        with pytest.raises(RuntimeError, match="vanishes on the model's"):
            module.SparseSkullCompletionLogic().complete(node)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith("SparseSkullCompletion-")]
    finally:
        scene.Clear(1)
