"""Pictures for people: orthogonal slices (matplotlib) and 3D surface renderings (VTK, offscreen)."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from sparseskull.data.resample import block_grid, block_max
from sparseskull.data.volume import Volume
from sparseskull.implant.mesh import MeshError, mask_to_mesh, vtk_classes

BONE = (0.93, 0.89, 0.80)
IMPLANT = (0.95, 0.45, 0.10)
DEFECT_EDGE = (0.35, 0.60, 0.95)
TRUTH = (0.30, 0.65, 0.95)


_VTK_CLASSES = {  # the VTK classes rendering uses, by the module that holds each
    "vtkCommonCore": ["vtkLogger"],
    "vtkCommonDataModel": ["vtkPolyData"],
    "vtkRenderingCore": ["vtkActor", "vtkPolyDataMapper", "vtkRenderWindow", "vtkRenderer", "vtkWindowToImageFilter"],
}


@functools.cache
def _vtk() -> SimpleNamespace:
    """Rendering's VTK classes from their own modules (``import vtk`` would add about 1 s to every preview)."""
    importlib.import_module("vtkmodules.vtkRenderingOpenGL2")  # its factories give the render window and mappers
    return vtk_classes(_VTK_CLASSES)


def mask_to_polydata(mask: Volume, max_voxels: int = 256, smooth: bool = True):
    """A surface of the mask in patient LPS mm (VTK polydata) for display: the STL's own meshing
    (:func:`~sparseskull.implant.mesh.mask_to_mesh`) on a copy max-pooled to at most ``max_voxels`` per axis."""
    vtk = _vtk()

    array = np.asarray(mask.array, dtype=bool)
    if not array.any():
        return vtk.vtkPolyData()
    factor = max(1, int(np.ceil(max(mask.shape) / max_voxels)))
    shape, spacing, origin = block_grid(mask, factor)
    small = Volume(block_max(array, factor), spacing, origin, mask.direction)
    try:
        return mask_to_mesh(small, "LPS", sigma=0.6 if smooth else 0.0, smoothing_iterations=15 if smooth else 0, decimate=0.0)
    except MeshError:  # too thin for the blur at this size: the voxels' own surface
        return mask_to_mesh(small, "LPS", sigma=0.0, smoothing_iterations=15 if smooth else 0, decimate=0.0)


VIEWS = {
    # name: (camera direction from the focal point in LPS, view-up in LPS)
    "anterior": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    "left": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "right": ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "superior": ((0.0, 0.0, 1.0), (0.0, -1.0, 0.0)),
    "oblique": ((0.6, -0.6, 0.55), (0.0, 0.0, 1.0)),
    "posterior-oblique": ((-0.55, 0.65, 0.5), (0.0, 0.0, 1.0)),
}


def render_surfaces(
    layers: Sequence[tuple[Volume, tuple[float, float, float], float]],
    view: str | Sequence[float] = "oblique",
    size: tuple[int, int] = (480, 480),
) -> np.ndarray:
    """Render masks as shaded surfaces; ``layers`` = (mask, rgb, opacity), where a mask may also be its surface
    already made by :func:`mask_to_polydata` (to render one skull in several pictures). Returns an RGB uint8 image.

    ``view``: a name from VIEWS, or an LPS direction from the object towards the camera.
    """
    vtk = _vtk()
    numpy_support = vtk.numpy_support

    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.08, 0.09, 0.11)
    for mask, rgb, opacity in layers:
        if isinstance(mask, Volume):
            if not np.any(mask.array):
                continue
            mask = mask_to_polydata(mask)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(mask)
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*rgb)
        actor.GetProperty().SetOpacity(opacity)
        actor.GetProperty().SetSpecular(0.2)
        renderer.AddActor(actor)
    if isinstance(view, str):
        direction, up = VIEWS[view]
    else:
        direction = tuple(float(v) for v in view)
        up = (0.0, 0.0, 1.0) if abs(direction[2]) < 0.95 * np.linalg.norm(direction) else (0.0, -1.0, 0.0)
    camera = renderer.GetActiveCamera()
    camera.SetPosition(*direction)
    camera.SetFocalPoint(0.0, 0.0, 0.0)
    camera.SetViewUp(*up)
    renderer.ResetCamera()
    camera.Zoom(1.3)
    # without a display, VTK warns "bad X server connection" and then renders offscreen all the same
    verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)
    try:
        window = vtk.vtkRenderWindow()
        window.SetOffScreenRendering(1)
        window.SetSize(*size)
        window.AddRenderer(renderer)
        window.Render()
    finally:
        vtk.vtkLogger.SetStderrVerbosity(verbosity)
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    out = grab.GetOutput()
    w, h, _ = out.GetDimensions()
    rgb = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
    window.Finalize()
    return np.ascontiguousarray(rgb)


def slice_views(volume: Volume, position: Sequence[int] | None = None) -> list[tuple[str, np.ndarray, float]]:
    """Axial, coronal and sagittal slices, oriented for display, with their pixel aspect ratio."""
    i, j, k = position if position is not None else [n // 2 for n in volume.shape]
    sx, sy, sz = volume.spacing_mm
    a = volume.array
    return [
        ("axial", a[:, :, k].T, sy / sx),
        ("coronal", a[:, j, :].T[::-1], sz / sx),
        ("sagittal", a[i, :, :].T[::-1], sz / sy),
    ]


def view_towards(target: Volume, whole: Volume, lift: float = 0.5) -> np.ndarray:
    """A camera direction that looks at ``target`` (e.g. an implant) from outside ``whole`` (the skull)."""
    d = target.centroid_lps() - whole.centroid_lps()
    d = d / max(np.linalg.norm(d), 1e-9)
    d[2] += lift
    return d / np.linalg.norm(d)


def comparison_figure(defective: Volume, predicted: Volume, truth: Volume, path: str | Path, title: str = "") -> Path:
    """One evaluated case side by side: input, prediction and ground truth, as 3D renderings (the skull seen
    towards the true implant) above the three orthogonal slices through the true implant's centre
    (prediction orange, truth blue, their overlap both)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    focus = truth if truth.array.any() else (predicted if predicted.array.any() else defective)
    centre = [int(c) for c in focus.centroid_index()]
    view = view_towards(focus, defective) if focus is not defective else "oblique"
    skull = mask_to_polydata(defective)  # once for the three pictures: the slowest part of them
    renders = [
        ("input: defective skull", [(skull, BONE, 1.0)]),
        ("prediction: implant (orange)", [(skull, BONE, 1.0), (predicted, IMPLANT, 1.0)]),
        ("ground truth: implant (blue)", [(skull, BONE, 1.0), (truth, TRUTH, 1.0)]),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 10), facecolor="black")
    for ax, (label, layers) in zip(axes[0], renders):
        ax.imshow(render_surfaces(layers, view=view, size=(420, 420)))
        ax.set_title(label, color="white")
        ax.axis("off")
    for ax, (name, bone, aspect), (_, pred, _), (_, true, _) in zip(
        axes[1], slice_views(defective, centre), slice_views(predicted, centre), slice_views(truth, centre)
    ):
        ax.imshow(bone, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        if true.any():
            ax.contourf(true.astype(float), levels=[0.5, 1.5], colors=["#4da6f2"], alpha=0.55)
        if pred.any():
            ax.contourf(pred.astype(float), levels=[0.5, 1.5], colors=["#f27319"], alpha=0.55)
        ax.set_title(f"{name}: prediction (orange), truth (blue)", color="white")
        ax.axis("off")
    if title:
        fig.suptitle(title, color="white")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70, facecolor="black")
    plt.close(fig)
    return path
