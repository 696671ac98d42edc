"""Medical image IO with geometry: NRRD, NIfTI, MHA/MHD and DICOM series folders.

SimpleITK does the reading and writing (one well-kept library for every format, with the full
direction matrix); this module turns its images into :class:`~sparseskull.data.volume.Volume` values,
checks them, and writes atomically so that a failure never leaves half a file behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sparseskull.data.volume import Volume

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


class VolumeReadError(ValueError):
    """A file or folder that cannot be used as a 3D volume; the message names it and says why."""


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("SimpleITK is needed for medical image IO: pip install SimpleITK") from exc
    return sitk


def has_image_suffix(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def _read_dicom_series(folder: Path):
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VolumeReadError(f"{folder}: a folder with no DICOM series in it")
    # several series: take the one with the most slices (the volume, not a scout)
    files = max((reader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len)
    if len(files) < 2:
        raise VolumeReadError(f"{folder}: the DICOM series has a single slice; a 3D volume needs several")
    reader.SetFileNames(files)
    return reader.Execute()


def image_to_volume(image, source: str = "image", contiguous: bool = True) -> Volume:
    """A SimpleITK image to a checked Volume (array indexed [i, j, k]; with ``contiguous=False`` a transposed
    view of ITK's [k, j, i] buffer, which saves a slow copy when the array goes back to [k, j, i] anyway)."""
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        sitk = _sitk()
        image = sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
        dim = 3
    if dim != 3:
        raise VolumeReadError(f"{source}: a {dim}D image with size {image.GetSize()}; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeReadError(
            f"{source}: {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector); "
            "a scalar CT or mask is needed"
        )
    if 1 in image.GetSize():
        raise VolumeReadError(f"{source}: size {image.GetSize()} is a single slice, not a 3D volume")
    spacing = image.GetSpacing()
    if min(spacing) <= 0 or not np.all(np.isfinite(spacing)):
        raise VolumeReadError(f"{source}: voxel spacing {spacing} is zero, negative or not finite")
    array = _sitk().GetArrayFromImage(image).transpose(2, 1, 0)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    try:
        return Volume(np.ascontiguousarray(array) if contiguous else array, spacing, image.GetOrigin(), direction)
    except ValueError as exc:
        raise VolumeReadError(f"{source}: {exc}") from exc


def read_volume(path: str | os.PathLike, contiguous: bool = True) -> Volume:
    """Read a 3D image file (NRRD, NIfTI, MHA/MHD, ...) or a DICOM series folder (``contiguous``: see
    :func:`image_to_volume`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    sitk = _sitk()
    try:
        if path.is_dir():
            image = _read_dicom_series(path)
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            if path.suffix.lower() in (".mha", ".mhd"):
                reader.SetImageIO("MetaImageIO")  # ITK picks readers by lower-case suffix only
            image = reader.Execute()
    except VolumeReadError:
        raise
    except RuntimeError as exc:
        raise VolumeReadError(f"{path}: not a readable 3D image ({_itk_reason(str(exc))})") from None
    return image_to_volume(image, str(path), contiguous)


def _itk_reason(message: str) -> str:
    """The human part of an ITK exception message (drop file/line prefixes and object addresses)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if lines and lines[-1].startswith("[nrrd]"):
        return lines[-1].split(":", 1)[-1].strip()
    for ln in lines:
        if "ERROR:" in ln:
            text = ln.split("ERROR:", 1)[1].strip()
            return re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", text) or "the image reader could not parse it"
    return "the image reader could not parse it"


def volume_to_image(volume: Volume):
    sitk = _sitk()
    array = volume.array
    if array.dtype == bool:
        array = array.view(np.uint8)  # same bytes, no copy
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(volume.spacing_mm)
    image.SetOrigin(volume.origin_lps)
    image.SetDirection(volume.direction.ravel().tolist())
    return image


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write, suffix: str = ".tmp") -> Path:
    """Make ``path`` by calling ``write(tmp)`` on a temporary file beside it, then renaming it into place:
    readers never see a half-written file, and a failure leaves the previous file (or none). The file
    gets the usual permissions (mkstemp's are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True, compression_level: int = 1) -> Path:
    """Write with full geometry, atomically (temp file then rename). Masks (bool) become uint8."""
    path = Path(path)
    if not has_image_suffix(path):
        raise ValueError(f"{path}: unknown image format; use one of {', '.join(IMAGE_SUFFIXES)}")
    if path.name.lower().endswith((".mhd", ".nhdr")):
        raise ValueError(f"{path}: detached-header formats are not written; use .nrrd, .nii.gz or .mha")
    sitk = _sitk()

    def write(tmp: Path) -> None:
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(tmp))
        writer.SetUseCompression(compress)
        if compress:
            writer.SetCompressionLevel(compression_level)
        writer.Execute(volume_to_image(volume))

    # the temporary file keeps the (possibly double) image suffix: SimpleITK picks the format by it
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
    return atomic_write(path, write, suffix)


def read_mask(path: str | os.PathLike, contiguous: bool = True) -> Volume:
    """Read a binary mask (any non-zero voxel is foreground) as a bool Volume."""
    volume = read_volume(path, contiguous)
    return volume.with_array(volume.array != 0)


def looks_like_mask(volume: Volume) -> bool:
    """True for a volume whose values are only 0 and 1 (a segmentation, not a CT)."""
    values = np.unique(volume.array[:: max(1, volume.shape[0] // 64), :, :])
    return bool(np.all(np.isin(values, (0, 1))))


@contextmanager
def staged_output(out: Path):
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on failure it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(stage, out)
    os.chmod(out, 0o755)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
