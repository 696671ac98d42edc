"""Masks to printable surfaces: VTK flying edges, windowed-sinc smoothing, quadric decimation, checked
closed and manifold, in patient millimetres (LPS, or RAS on request), written as STL.

The surface is extracted at the 0.5 level of the mask blurred by a small Gaussian (sigma in voxels),
not from the raw voxels: marching cubes on a scalar field gives a closed, manifold surface by
construction and without the voxel staircase, and its enclosed volume matches the mask's.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy import ndimage

from sparseskull.data.io import atomic_write
from sparseskull.data.volume import Volume, bounding_box

SPACES = ("LPS", "RAS")
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # the LPS <-> RAS flip (its own inverse): the one home of it


_VTK_CLASSES = {  # the VTK classes this module uses, by the module that holds each
    "vtkCommonDataModel": ["vtkImageData"],
    "vtkCommonMath": ["vtkMatrix4x4"],
    "vtkCommonTransforms": ["vtkTransform"],
    "vtkFiltersCore": ["vtkCleanPolyData", "vtkFeatureEdges", "vtkFlyingEdges3D", "vtkMassProperties", "vtkPolyDataNormals",
                       "vtkQuadricDecimation", "vtkReverseSense", "vtkTriangleFilter", "vtkWindowedSincPolyDataFilter"],
    "vtkFiltersGeneral": ["vtkTransformFilter"],
    "vtkIOGeometry": ["vtkSTLReader", "vtkSTLWriter"],
}


def vtk_classes(classes: dict[str, list[str]]) -> SimpleNamespace:
    """The named VTK classes (keyed by the ``vtkmodules`` module that holds them) and ``numpy_support``, imported from
    their own modules: ``import vtk`` loads every VTK module (0.9 s on this machine, a tenth of the pipeline's stages
    other than the networks); meshing's take 0.2 s."""
    found = {"numpy_support": importlib.import_module("vtkmodules.util.numpy_support")}
    for module, names in classes.items():
        loaded = importlib.import_module(f"vtkmodules.{module}")
        found.update({name: getattr(loaded, name) for name in names})
    return SimpleNamespace(**found)


@functools.cache
def _vtk() -> SimpleNamespace:
    """This module's VTK classes (``_VTK_CLASSES``)."""
    return vtk_classes(_VTK_CLASSES)


class MeshError(ValueError):
    """The surface could not be made closed and manifold."""


@dataclass
class MeshCheck:
    points: int
    triangles: int
    boundary_edges: int
    non_manifold_edges: int
    volume_mm3: float
    area_mm2: float

    @property
    def watertight(self) -> bool:
        return self.triangles > 0 and self.boundary_edges == 0 and self.non_manifold_edges == 0


def transform_polydata(poly, affine: np.ndarray):
    """``poly`` with every point mapped by the 4x4 ``affine`` (e.g. voxel index -> patient mm)."""
    vtk = _vtk()

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(affine[r, c]))
    transform = vtk.vtkTransform()
    transform.SetMatrix(m)
    tf = vtk.vtkTransformFilter()
    tf.SetInputData(poly)
    tf.SetTransform(transform)
    tf.Update()
    return tf.GetOutput()


def mask_to_mesh(mask: Volume, space: str = "LPS", sigma: float = 0.6, smoothing_iterations: int = 20,
                 decimate: float = 0.5, pad: int = 2):
    """A closed triangle surface of ``mask`` in patient mm (``space`` LPS or RAS), as vtkPolyData.

    ``decimate``: the share of triangles to remove (0 keeps them all). Raises MeshError for an empty
    mask or when the result is not closed and manifold (each step is checked, and decimation is
    dropped if it broke the surface)."""
    vtk = _vtk()

    space = space.upper()
    if space not in SPACES:
        raise ValueError(f"space must be LPS or RAS; got {space!r}")
    array = np.asarray(mask.array, dtype=bool)
    box = bounding_box(array, pad)  # crop to the object (plus a margin for the blur),
    if box is None:
        raise MeshError("the mask is empty: there is no surface to mesh")
    lo = np.array([sl.start for sl in box])
    field = np.pad(array[box].astype(np.float32), pad)  # then pad with zeros so the surface closes at the volume border
    if sigma > 0:
        field = ndimage.gaussian_filter(field, sigma)
    image = vtk.vtkImageData()
    image.SetDimensions(*field.shape)
    image.GetPointData().SetScalars(vtk.numpy_support.numpy_to_vtk(field.ravel(order="F"), deep=True))
    surface = vtk.vtkFlyingEdges3D()
    surface.SetInputData(image)
    surface.SetValue(0, 0.5)
    surface.ComputeNormalsOff()
    surface.Update()
    poly = surface.GetOutput()
    if poly.GetNumberOfCells() == 0:
        raise MeshError("the mask is too thin to give a surface at this blur; lower sigma")
    poly = _clean_triangles(poly)
    if smoothing_iterations > 0:
        smooth = vtk.vtkWindowedSincPolyDataFilter()
        smooth.SetInputData(poly)
        smooth.SetNumberOfIterations(smoothing_iterations)
        smooth.SetPassBand(0.1)
        smooth.BoundarySmoothingOff()
        smooth.FeatureEdgeSmoothingOff()
        smooth.NonManifoldSmoothingOn()
        smooth.NormalizeCoordinatesOn()
        smooth.Update()
        poly = smooth.GetOutput()
    if decimate > 0:
        dec = vtk.vtkQuadricDecimation()
        dec.SetInputData(poly)
        dec.SetTargetReduction(float(decimate))
        dec.VolumePreservationOn()
        dec.Update()
        if check_mesh(dec.GetOutput()).watertight:
            poly = dec.GetOutput()
    # field index -> mask index -> patient mm
    shift = np.eye(4)
    shift[:3, 3] = lo - pad
    affine = mask.ijk_to_lps @ shift
    if space == "RAS":
        affine = RAS_FROM_LPS @ affine
    poly = transform_polydata(poly, affine)
    if np.linalg.det(affine[:3, :3]) < 0:  # a mirroring transform turns the triangles inside out
        rev = vtk.vtkReverseSense()
        rev.SetInputData(poly)
        rev.Update()
        poly = rev.GetOutput()
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputData(poly)
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()
    normals.Update()
    poly = normals.GetOutput()
    check = check_mesh(poly)
    if not check.watertight:
        raise MeshError(f"the surface is not closed and manifold ({check.boundary_edges} boundary and "
                        f"{check.non_manifold_edges} non-manifold edges)")
    return poly


def _clean_triangles(poly):
    """Merge duplicate points and make every cell a triangle (every connected piece is kept)."""
    vtk = _vtk()

    clean = vtk.vtkCleanPolyData()
    clean.SetInputData(poly)
    clean.Update()
    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(clean.GetOutput())
    tri.Update()
    return tri.GetOutput()


def check_mesh(poly) -> MeshCheck:
    """Counts of boundary and non-manifold edges (both 0 for a closed manifold), volume and area."""
    vtk = _vtk()

    def edges(boundary: bool, non_manifold: bool) -> int:
        fe = vtk.vtkFeatureEdges()
        fe.SetInputData(poly)
        fe.SetBoundaryEdges(boundary)
        fe.SetNonManifoldEdges(non_manifold)
        fe.SetFeatureEdges(False)
        fe.SetManifoldEdges(False)
        fe.Update()
        return fe.GetOutput().GetNumberOfCells()

    volume = area = 0.0
    if poly.GetNumberOfCells():
        mp = vtk.vtkMassProperties()
        mp.SetInputData(poly)
        mp.Update()
        volume, area = mp.GetVolume(), mp.GetSurfaceArea()
    return MeshCheck(poly.GetNumberOfPoints(), poly.GetNumberOfCells(), edges(True, False), edges(False, True), volume, area)


def write_stl(poly, path: str | os.PathLike, space: str = "LPS", binary: bool = True) -> Path:
    """Write an STL whose header names its coordinate system as Slicer does (``SPACE=LPS``)."""
    vtk = _vtk()

    def write(tmp: Path) -> None:
        w = vtk.vtkSTLWriter()
        w.SetInputData(poly)
        w.SetFileName(str(tmp))
        w.SetHeader(f"SPACE={space.upper()} sparseskull")
        if binary:
            w.SetFileTypeToBinary()
        else:
            w.SetFileTypeToASCII()
        if not w.Write():
            raise OSError(f"{tmp}: the STL could not be written")

    return atomic_write(path, write, suffix=".tmp.stl")


def read_stl(path: str | os.PathLike):
    """Read an STL back (vtkPolyData, points merged so edges can be checked)."""
    vtk = _vtk()

    r = vtk.vtkSTLReader()
    r.SetFileName(str(path))
    r.MergingOn()
    r.Update()
    return r.GetOutput()


def mesh_centroid(poly) -> np.ndarray:
    """The centroid of the solid a closed surface encloses (divergence theorem over its triangles)."""
    numpy_support = _vtk().numpy_support

    pts = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    cells = numpy_support.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    a, b, c = pts[cells[:, 0]], pts[cells[:, 1]], pts[cells[:, 2]]
    v = np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0  # signed volumes of the tetrahedra with the origin
    if abs(v.sum()) < 1e-12:
        raise ValueError("the surface encloses no volume")
    return ((a + b + c) / 4.0 * v[:, None]).sum(axis=0) / v.sum()
