"""The clinical job, headless: from a head CT (or a skull mask) to a printable implant.

Stages: read -> skull (threshold, largest bone, crop) -> model grid (block-average to the model's
voxel spacing, as in training) -> network (completion; the completed skull is the input plus what
the network generates, the paper's Eq. 4) -> back onto the CT grid (the coarse completed skull
interpolated linearly, restricted to the coarse implant's neighbourhood) -> clean (clearance,
specks, parts away from the defect) -> mesh (closed, manifold, patient mm) -> write.

``sparseskull complete``, ``sparseskull demo``, ``sparseskull evaluate`` and the Slicer module all
run :func:`complete_skull` / :func:`run_complete`, so their figures are what a user gets.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sparseskull import __version__
from sparseskull.data.anatomy import braincase_centre
from sparseskull.data.io import (
    ImageHeader,
    itk_reason,
    looks_like_mask,
    read_header,
    read_volume,
    staged_output,
    write_volume,
)
from sparseskull.data.volume import Volume
from sparseskull.implant.clean import clean_implant, ensure_thickness
from sparseskull.implant.grid import check_image_extent, to_ct_grid, to_model_grid
from sparseskull.implant.network import NetworkCompleter
from sparseskull.implant.options import STAGES, CompleteOptions, InputError
from sparseskull.implant.skull import (
    NoBoneError,
    auto_threshold,
    drop_mandible,
    largest_component,
    skull_mask_from_ct,
)
from sparseskull.runtime import available_memory_bytes, peak_mib, set_threads


@dataclass
class CompletionResult:
    defective: Volume  # the skull mask on the input grid
    completed: Volume  # defective | implant
    implant: Volume
    mesh: object | None  # vtkPolyData of the implant, LPS or RAS as asked; None when the implant is empty
    report: dict
    input: Volume | None = None  # the CT (or mask) as read


Progress = Callable[[str, int, int], None]


class OutputError(OSError, ValueError):
    """The outputs could not be written (full disk, no permission); the previous outputs, if any, are kept. An OSError
    (what it replaces) and a ValueError (what the command line reports in one line)."""


FIXED_MIB = 400  # the process before the image: Python, torch, the model
BYTES_PER_VOXEL = 64  # measured: 829 MiB peak for the 7.3 M voxel sample (256 x 256 x 111, int16) = about 60 B/voxel beyond that


def needed_memory_bytes(header: ImageHeader) -> int:
    """A run's peak memory, estimated from the header: the image as stored, and the masks, labels and distance maps made from it."""
    return FIXED_MIB * 2**20 + header.voxels * (header.bytes_per_voxel + BYTES_PER_VOXEL)


def check_header(header: ImageHeader, options: CompleteOptions) -> None:
    """Refuse, before any voxel is read, an image this run cannot use or cannot hold in memory."""
    size, spacing = header.size, header.spacing_mm
    if len(size) == 4 and size[3] > 1:
        raise InputError(f"a 4D image of {size[3]} volumes {list(size[:3])}: save the one CT or mask to complete as a 3D file")
    if len(size) != 3 and not (len(size) == 4 and size[3] == 1):
        raise InputError(f"a {len(size)}D image with size {list(size)}; a 3D CT or mask is needed")
    if not all(np.isfinite(spacing)) or min(np.abs(spacing)) == 0:  # a negative one is a flipped axis (ITK reads it so)
        raise InputError(f"its header gives voxel spacing {list(spacing)} mm, which is zero or not a number: "
                         "fix the spacing in the file (or export it again)")
    if options.max_voxels and header.voxels > options.max_voxels:
        raise InputError(f"{' x '.join(map(str, size))} = {header.voxels:,} voxels, more than the limit of {options.max_voxels:,}: "
                         "crop or resample it, or raise --max-voxels")
    available = available_memory_bytes() if options.max_voxels else None
    need = needed_memory_bytes(header)
    if available is not None and need > available:
        raise InputError(f"{' x '.join(map(str, size))} voxels need about {need / 2**30:.1f} GiB of memory, and {available / 2**30:.1f} GiB "
                         "is available: crop or resample it, free memory, or pass --max-voxels 0 to try anyway")


def _names(source_name: str, exc: Exception) -> InputError:
    """The stage's refusal, naming the input (as read errors do)."""
    message = str(exc)
    return InputError(message if message.startswith(source_name) else f"{source_name}: {message}")


def skull_from_input(volume: Volume, options: CompleteOptions) -> tuple[Volume, dict]:
    """The defective skull mask on the input grid (largest connected bone), and what was done."""
    kind = options.input_kind
    if kind == "auto":
        kind = "mask" if looks_like_mask(volume) else "ct"
    info: dict = {"input_kind": kind}
    if np.asarray(volume.array).dtype.kind == "f":
        not_numbers = int(np.count_nonzero(np.isnan(volume.array)))
        if not_numbers:
            info["nan_voxels"] = not_numbers  # taken as no bone: exports mark voxels outside the scanned circle so
            if not_numbers == volume.array.size:
                raise InputError("every voxel is NaN (not a number): the image holds no values; export it again")
    if kind == "mask":
        bone = np.asarray(volume.array) != 0
        bone &= ~np.isnan(volume.array) if volume.array.dtype.kind == "f" else True
        if not bone.any():
            raise InputError("the mask is empty: there is no skull to complete (segment the skull first, or give the CT)")
    else:
        threshold = auto_threshold(volume) if options.threshold_hu == "auto" else float(options.threshold_hu)
        info["threshold_hu"] = round(threshold, 1)
        bone = np.asarray(skull_mask_from_ct(volume, threshold, keep_largest=False).array)
    total = int(bone.sum())
    skull = largest_component(bone)
    if options.drop_mandible:
        mandible_free, info["mandible_voxels"] = drop_mandible(volume.with_array(skull))
        skull = np.asarray(mandible_free.array)
    kept = int(skull.sum())
    info.update(bone_voxels=total, skull_voxels=kept, dropped_voxels=total - kept)
    if kept * volume.voxel_volume_mm3 < 20_000:  # 20 cm^3: a skull vault has several hundred
        raise InputError(f"the largest piece of bone is only {kept * volume.voxel_volume_mm3 / 1000:.1f} cm^3: "
                         "this does not look like a skull (wrong threshold, or not a head CT?)")
    return volume.with_array(skull), info


def super_resolution_spec(options: CompleteOptions, paired: bool = True) -> str | None:
    """The super-resolution model ``options`` ask for, or None: the one ``--super-resolution`` names, or (``auto``, with
    ``paired``) the one that ``--model`` (or the default) is paired with."""
    from sparseskull.nets.catalogue import find_pair

    spec = options.super_resolution
    if spec == "none" or (spec == "auto" and not paired):
        return None
    if spec == "auto":
        pair = find_pair(options.model)
        return pair.super_resolution if pair is not None else None
    return spec


def super_resolver_for(options: CompleteOptions, completer, paired: bool = True, spec: str | None = "auto"):
    """The super-resolution stage ``options`` ask for (see :func:`super_resolution_spec`; ``spec``: that answer, when
    already known), checked to take the completion model's grid; or None."""
    from sparseskull.implant.superres import SuperResolver

    spec = super_resolution_spec(options, paired) if spec == "auto" else spec
    if spec is None:
        return None
    resolver = SuperResolver(spec, completer.device, getattr(completer, "backend", "torch"), passes=options.passes)
    resolver.check_feeds(completer.info)
    return resolver


def _stage_names(super_resolution: bool) -> tuple[str, ...]:
    return STAGES if super_resolution else tuple(s for s in STAGES if s != "super-resolution")


def planned_stages(options: CompleteOptions, completer=None, super_resolver="auto") -> tuple[str, ...]:
    """The stages this run will go through (the progress lines count them): super-resolution only where there is one."""
    if super_resolver == "auto":
        return _stage_names(super_resolution_spec(options, paired=completer is None) is not None)
    return _stage_names(super_resolver is not None)


def complete_skull(source, options: CompleteOptions | None = None, progress: Progress | None = None, completer=None,
                   super_resolver="auto") -> CompletionResult:
    """Run the pipeline on a path (image file or DICOM folder) or a :class:`Volume`; nothing is written.

    ``completer``: the completion step, by default a :class:`NetworkCompleter` for ``options.model``.
    Any object with ``info`` (a ModelInfo: resolution, spacing_mm), ``name``, ``device``, ``backend``
    and a call ``(coarse, grid)`` -> completed coarse grid will do; the tests use one that returns the
    known answer, to check every stage around the network. ``super_resolver``: the super-resolution stage
    (a :class:`~sparseskull.implant.superres.SuperResolver` or any object called like it), None for none, or
    ``auto``: as ``options.super_resolution`` says (a given ``completer`` takes no paired model of its own)."""
    from sparseskull.implant.mesh import mask_to_mesh

    options = options or CompleteOptions()
    set_threads(options.threads)
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {}
    t_start = time.perf_counter()
    clock = [t_start]

    paired = completer is None  # a given completer takes no paired super-resolution model of its own
    sr_spec = super_resolution_spec(options, paired) if super_resolver == "auto" else None
    stages = _stage_names(sr_spec is not None if super_resolver == "auto" else super_resolver is not None)

    def stage(name: str) -> None:
        if progress is not None:
            progress(name, stages.index(name), len(stages))

    def done(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 3)
        peaks[name] = peak_mib()
        clock[0] = now

    stage("read")
    source_name = "volume" if isinstance(source, Volume) else str(source)
    header = None
    if not isinstance(source, Volume):
        header = read_header(source)
        try:
            check_header(header, options)
        except InputError as exc:
            raise _names(source_name, exc) from None
    if completer is None:
        completer = NetworkCompleter(options.model, options.device, options.backend, passes=options.passes)
    if super_resolver == "auto":
        super_resolver = super_resolver_for(options, completer, spec=sr_spec)
    info = completer.info
    try:
        if header is not None:
            check_image_extent(header, info.spacing_mm, info.resolution, options.max_extent)
        volume = source if isinstance(source, Volume) else read_volume(source)
        done("read")

        stage("skull")
        skull, skull_info = skull_from_input(volume, options)
        done("skull")

        stage("model grid")
        coarse_in, grid = to_model_grid(skull, info.spacing_mm, info.resolution, options.max_extent)
    except (InputError, NoBoneError) as exc:
        raise _names(source_name, exc) from None
    coarse_spacing = [round(f * s, 3) for f, s in zip(grid.factors, skull.spacing_mm)]
    warnings = []
    mismatch = [abs(c / m - 1) for c, m in zip(coarse_spacing, info.spacing_mm)]
    if skull_info.get("nan_voxels"):
        warnings.append(f"{skull_info['nan_voxels']:,} voxels are NaN (not a number) and were taken as no bone")
    if max(mismatch) > 0.25:
        warnings.append(f"the CT's spacing does not divide into the model's: the model grid has {coarse_spacing} mm voxels, "
                        f"the model was trained at {list(info.spacing_mm)} mm")
    done("model grid")

    stage("network")
    coarse_out = completer(coarse_in, grid)
    done("network")

    sr_info, fine = None, None
    if super_resolver is not None:
        stage("super-resolution")
        skipped = super_resolver.skip_reason(skull, grid)  # a CT with voxels as coarse as the finer grid: nothing to gain
        if skipped:
            sr_info = {"model": super_resolver.name, "skipped": skipped}
            warnings.append(skipped)
        else:
            *fine, sr_info = super_resolver(skull, coarse_in, coarse_out, grid)
            if sr_info.get("warning"):
                warnings.append(sr_info["warning"])
        done("super-resolution")

    stage("CT grid")
    raw = to_ct_grid(*fine, skull) if fine else to_ct_grid(coarse_in, coarse_out, grid, skull)
    done("CT grid")

    stage("clean")
    centre = braincase_centre(skull) if raw.any() else None  # the filters, spanning and thickening look out from it: once
    implant_array, clean_info = clean_implant(raw, skull, options.min_implant_mm3, options.clearance_mm, options.keep_fraction,
                                              options.min_depth_mm, options.drop_behind_bone, options.span_opening, centre)
    if options.min_thickness_mm > 0 and implant_array.any():
        before = int(implant_array.sum())
        implant_array = ensure_thickness(implant_array, skull, options.min_thickness_mm, options.clearance_mm, centre=centre)
        clean_info["thickened_voxels"] = int(implant_array.sum()) - before
    implant = skull.with_array(implant_array)
    completed = skull.with_array(np.asarray(skull.array, bool) | implant_array)
    done("clean")

    stage("mesh")
    mesh = None
    mesh_info: dict = {"written": False}
    if implant_array.any():
        from sparseskull.implant.mesh import check_mesh

        mesh = mask_to_mesh(implant, options.stl_space, smoothing_iterations=options.smoothing_iterations, decimate=options.decimate)
        check = check_mesh(mesh)
        mesh_info = {"written": True, "space": options.stl_space.upper(), "triangles": check.triangles, "watertight": check.watertight,
                     "volume_cm3": round(check.volume_mm3 / 1000, 3), "area_cm2": round(check.area_mm2 / 100, 2)}
    done("mesh")

    vox_cm3 = skull.voxel_volume_mm3 / 1000.0
    implant_cm3 = round(float(implant_array.sum()) * vox_cm3, 3)
    report = {
        "sparseskull": __version__,
        "input": source_name,
        "grid": list(volume.shape),
        "spacing_mm": [round(s, 4) for s in volume.spacing_mm],
        "oblique": bool(not np.allclose(volume.direction, np.diag(np.sign(np.diag(volume.direction))), atol=1e-4)),
        **skull_info,
        "skull_volume_cm3": round(float(skull.array.sum()) * vox_cm3, 3),
        "model": {"path": str(getattr(completer, "path", "")), "name": completer.name, "resolution": info.resolution, "spacing_mm": list(info.spacing_mm),
                  "channels": list(info.channels), "tau": info.tau, "validation": info.metrics,
                  "passes": getattr(completer, "passes", 1)},
        "model_grid": {"shape": [int(n) for n in coarse_in.shape], "factors": list(grid.factors), "spacing_mm": coarse_spacing,
                       "input_points": int(coarse_in.sum()), "completed_points": int(coarse_out.sum()),
                       "generated_points": int((coarse_out & ~coarse_in).sum())},
        "super_resolution": sr_info,
        "device": str(completer.device),
        "backend": completer.backend,
        "defect_found": bool(implant_array.any()),
        "implant": {"voxels": int(implant_array.sum()), "volume_cm3": implant_cm3, **clean_info,
                    "centroid_lps_mm": [round(float(v), 2) for v in implant.centroid_lps()] if implant_array.any() else None},
        "mesh": mesh_info,
        "options": {k: v for k, v in asdict(options).items() if k not in ("model",)},
        "warnings": warnings,
        "seconds": timings,
        "peak_mib_after": peaks,
    }
    if not implant_array.any():
        report["message"] = ("no defect found: the network added no bone beyond specks, so there is no implant "
                             "(an empty implant is a valid answer for an intact skull)")
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    return CompletionResult(skull, completed, implant, mesh, report, input=volume)


def preview(result: CompletionResult, path: Path, title: str = "") -> Path:
    """The implant in place on the skull (3D), and three orthogonal slices through it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparseskull.implant.render import (
        BONE,
        IMPLANT,
        render_surfaces,
        slice_views,
        view_towards,
    )

    has_implant = bool(result.implant.array.any())
    focus = result.implant if has_implant else result.defective
    centre = [int(c) for c in focus.centroid_index()]
    background = result.input if result.input is not None and result.input.shape == result.defective.shape else result.defective
    is_ct = background is result.input and not looks_like_mask(background)
    fig, axes = plt.subplots(1, 4, figsize=(20, 5.4), facecolor="black")
    views = zip(axes, slice_views(background, centre), slice_views(result.defective, centre), slice_views(result.implant, centre))
    for ax, (name, img, aspect), (_, bone, _), (_, imp, _) in views:
        ax.imshow(img, cmap="gray", vmin=-150 if is_ct else 0, vmax=1300 if is_ct else 1, aspect=aspect, interpolation="nearest")
        ax.contour(bone.astype(float), levels=[0.5], colors=["#ffd24d"], linewidths=0.8)
        if imp.any():
            ax.contourf(imp.astype(float), levels=[0.5, 1.5], colors=["#f27319"], alpha=0.7)
        ax.set_title(f"{name}: skull (yellow), implant (orange)", color="white")
        ax.axis("off")
    view = view_towards(result.implant, result.defective) if has_implant else "oblique"
    image = render_surfaces([(result.defective, BONE, 1.0), (result.implant, IMPLANT, 1.0)], view=view, size=(540, 540))
    axes[3].imshow(image)
    axes[3].set_title(title or ("implant (orange) on the skull" if has_implant else "no defect found"), color="white")
    axes[3].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)
    return path


def write_outputs(result: CompletionResult, folder: Path, options: CompleteOptions) -> list[str]:
    """Implant STL, masks (with the input's geometry), report and preview into ``folder``."""
    from sparseskull.implant.mesh import mask_to_mesh, write_stl

    written = []
    if result.mesh is not None:
        write_stl(result.mesh, folder / "implant.stl", options.stl_space)
        written.append("implant.stl")
    for name, vol in (("implant", result.implant), ("completed_skull", result.completed), ("defective_skull", result.defective)):
        write_volume(vol.with_array(np.asarray(vol.array, dtype=np.uint8)), folder / f"{name}.nrrd")
        written.append(f"{name}.nrrd")
    if options.skull_stl:
        skull_mesh = mask_to_mesh(result.completed, options.stl_space, sigma=0.6, smoothing_iterations=options.smoothing_iterations, decimate=0.8)
        write_stl(skull_mesh, folder / "completed_skull.stl", options.stl_space)
        written.append("completed_skull.stl")
    if options.preview:
        preview(result, folder / "preview.png")
        written.append("preview.png")
    return written


def run_complete(source, out: str | os.PathLike, options: CompleteOptions | None = None, progress: Progress | None = None,
                 extra_report: Callable[[CompletionResult], dict] | None = None, completer=None, super_resolver="auto") -> CompletionResult:
    """:func:`complete_skull`, then every output written to ``out`` (all or nothing: a staging folder
    beside it replaces it only when everything succeeded)."""
    options = options or CompleteOptions()
    out = Path(out)
    check_output(out)  # before the minutes of work, not after
    result = complete_skull(source, options, progress, completer, super_resolver)
    if progress is not None:
        stages = _stage_names(result.report["super_resolution"] is not None)  # what the run went through
        progress("write", stages.index("write"), len(stages))
    t0 = time.perf_counter()
    try:
        with staged_output(out) as stage:
            files = write_outputs(result, stage, options)
            if extra_report is not None:
                result.report.update(extra_report(result))
            result.report["seconds"]["write"] = round(time.perf_counter() - t0, 3)
            result.report["peak_mib"] = peak_mib()
            result.report["files"] = files + ["report.json"]
            (stage / "report.json").write_text(json.dumps(result.report, indent=1) + "\n")
    except (OSError, RuntimeError) as exc:  # a full disk, a quota, a file size limit; SimpleITK's writers raise RuntimeError
        if not isinstance(exc, OSError) and "itk::ERROR" not in str(exc):
            raise  # not a write failure (e.g. the preview's rendering): the caller sees it as it is
        text = str(exc).strip()
        text = text.split(": ", 1)[-1] if text.startswith(str(out.parent)) else text  # not the staging file's name
        reason = getattr(exc, "strerror", None) or (itk_reason(text) if isinstance(exc, RuntimeError) else text) or type(exc).__name__
        kept = "the previous outputs there are kept" if out.exists() else "nothing was written"
        raise OutputError(f"{out}: writing the outputs failed ({reason}); {kept}: free disk space or choose another --out") from None
    return result


def check_output(out: Path) -> None:
    """Refuse an output that cannot become the output folder: an existing file, or a place that cannot be written."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: an existing file, not a folder: choose another --out (the outputs are a folder)")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: {parent} cannot be written to: choose another --out")

