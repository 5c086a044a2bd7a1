"""Organ surfaces: a labelmap -> one closed triangle mesh per organ, in world millimetres.

The steps, the parameters and their defaults mean what they mean in 3D Slicer's conversion
of a binary labelmap to a closed surface (``vtkBinaryLabelmapToClosedSurfaceConversionRule``,
its default flying-edges method), so that a surface made here matches the one Slicer shows:

1. the organ's voxels, cropped to their bounding box with one voxel of background on every
   side (fast, and the surface is closed even where the organ touches the volume's edge);
2. ``vtkDiscreteFlyingEdges3D`` in voxel index space (unit spacing): the surface runs
   half-way between the organ's voxel centres and their neighbours';
3. decimation factor d > 0: ``vtkDecimatePro``, target reduction d (topology preserved, no
   splitting, feature angle 60 degrees);
4. smoothing factor s > 0: ``vtkWindowedSincPolyDataFilter`` in index space, pass band
   10^(-4 s) and 20 + 40 s iterations (s = 0.5: pass band 0.01, 40 iterations), normalised
   coordinates, no boundary or feature-edge smoothing;
5. the voxel-to-world transform (the Image's affine, then RAS -> LPS when asked);
6. point normals (one per point, no splitting), facing outwards also when the affine mirrors.

Coordinates: "ras" is the engine's world; "lps" is what Slicer writes to surface files by
default (x and y negated). Both are millimetres.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData
from vtkmodules.vtkFiltersCore import (
    vtkDecimatePro,
    vtkTriangleMeshPointNormals,
    vtkWindowedSincPolyDataFilter,
)
from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D

from ..errors import AbdoSegError
from ..image import Image, bounding_boxes
from ..io.itk_grid import LPS_TO_RAS
from ..organs import ORGANS, Organ
from .mesh_files import write_meshes
from .options import COORDINATES, DECIMATION_FACTOR, DEFAULT_COORDINATES, FORMATS, SMOOTHING_FACTOR

MERGED_NAME = "organs"
"""File stem of the one file that holds every organ (``merge=True``)."""


def organ_surfaces(
    labels: Image,
    coordinates: str = "ras",
    smoothing: float = SMOOTHING_FACTOR,
    decimation: float = DECIMATION_FACTOR,
) -> dict[Organ, vtkPolyData]:
    """One closed surface per organ present in ``labels``, in the organ table's order.

    labels: integer organ ids (0 background, see organs.py), array (I, J, K).
    coordinates: "ras" or "lps" world millimetres for the points.
    Returns {organ: triangle mesh with point normals}; organs without a voxel are left out.
    """
    _check_parameters(coordinates, smoothing, decimation)
    boxes = organ_boxes(labels.array)
    return {organ: organ_surface(labels, organ, box, coordinates, smoothing, decimation) for organ, box in boxes.items()}


def organ_boxes(labels: np.ndarray) -> dict[Organ, tuple[slice, slice, slice]]:
    """Bounding box (voxel index slices along I, J, K) of each organ present in ``labels``, found in one pass."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must hold integer organ ids, got {labels.dtype}")
    boxes = bounding_boxes(labels, max_label=len(ORGANS))
    return {organ: boxes[organ.label - 1] for organ in ORGANS if boxes[organ.label - 1] is not None}


def organ_surface(
    labels: Image,
    organ: Organ,
    box: tuple[slice, slice, slice],
    coordinates: str = "ras",
    smoothing: float = SMOOTHING_FACTOR,
    decimation: float = DECIMATION_FACTOR,
) -> vtkPolyData:
    """The closed surface of ``organ`` (steps 1-6 above), whose voxels lie inside ``box`` (see organ_boxes).

    Returns a triangle mesh with point normals, points in ``coordinates`` ("ras" or "lps") mm.
    """
    _check_parameters(coordinates, smoothing, decimation)
    to_world = (LPS_TO_RAS @ labels.affine) if coordinates == "lps" else labels.affine
    block, origin = _padded_mask(np.asarray(labels.array), box, organ.label)
    return _surface(block, origin, to_world, smoothing, decimation)


def export_surfaces(
    labels: Image,
    folder: str | Path,
    fmt: str = "stl",
    coordinates: str = DEFAULT_COORDINATES,
    merge: bool = False,
    smoothing: float = SMOOTHING_FACTOR,
    decimation: float = DECIMATION_FACTOR,
) -> list[Path]:
    """Build the organ surfaces and write them to ``folder`` (created if missing), each file atomically.

    fmt: "stl", "obj" (+ .mtl), "ply" or "vtp" (see mesh_files.py); coordinates: "lps" (Slicer's
    export default) or "ras", written in each file and in its name, e.g. ``liver_LPS.stl``.
    merge: one file ``organs_LPS.<fmt>`` holding every organ, instead of one file per organ.
    Returns the paths written. Raises AbdoSegError when the labelmap holds no organ.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    surfaces = organ_surfaces(labels, coordinates, smoothing, decimation)
    if not surfaces:
        labels_text = ", ".join(f"{organ.label} {organ.name}" for organ in ORGANS)
        raise AbdoSegError(f"the labelmap holds no organ ({labels_text}); there is no surface to export.")
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    space = coordinates.upper()
    if merge:
        return write_meshes(surfaces, folder / f"{MERGED_NAME}_{space}.{fmt}", space)
    written = []
    for organ, mesh in surfaces.items():
        written += write_meshes({organ: mesh}, folder / f"{organ.name}_{space}.{fmt}", space)
    return written


def _check_parameters(coordinates: str, smoothing: float, decimation: float) -> None:
    if coordinates not in COORDINATES:
        raise ValueError(f"coordinates must be one of {COORDINATES}, got {coordinates!r}")
    for name, factor in (("smoothing", smoothing), ("decimation", decimation)):
        if not 0.0 <= factor <= 1.0:
            raise AbdoSegError(f"the {name} factor must be between 0 and 1, got {factor:g}.")


def _padded_mask(array: np.ndarray, box: tuple[slice, ...], label: int) -> tuple[np.ndarray, np.ndarray]:
    """The organ's mask in its bounding box plus one voxel of background on every side.

    Returns (uint8 block (I+2, J+2, K+2) in Fortran order: i varies fastest, as VTK reads
    image scalars; voxel index of the block's first voxel in the labelmap, shape (3,)).
    """
    inner = array[box] == label
    block = np.zeros(tuple(n + 2 for n in inner.shape), dtype=np.uint8, order="F")
    block[1:-1, 1:-1, 1:-1] = inner
    origin = np.array([s.start - 1 for s in box], dtype=np.float64)
    return block, origin


def _surface(block: np.ndarray, origin: np.ndarray, to_world: np.ndarray, smoothing: float, decimation: float) -> vtkPolyData:
    """Steps 2-6 of the module docstring for one padded organ mask.

    block: uint8 mask (I, J, K), Fortran order; origin: its first voxel's index in the
    labelmap (3,); to_world: (4, 4) labelmap voxel index -> world mm.
    """
    image = vtkImageData()
    image.SetDimensions(*block.shape)
    image.GetPointData().SetScalars(numpy_to_vtk(block.ravel(order="F"), deep=False))
    contour = vtkDiscreteFlyingEdges3D()
    contour.SetInputData(image)
    contour.ComputeGradientsOff()
    contour.ComputeNormalsOff()
    contour.ComputeScalarsOff()
    contour.SetValue(0, 1)
    contour.Update()
    mesh = contour.GetOutput()

    if decimation > 0:
        decimate = vtkDecimatePro()
        decimate.SetInputData(mesh)
        decimate.SetFeatureAngle(60)
        decimate.SplittingOff()
        decimate.PreserveTopologyOn()
        decimate.SetMaximumError(1)
        decimate.SetTargetReduction(decimation)
        decimate.Update()
        mesh = decimate.GetOutput()

    if smoothing > 0:
        smooth = vtkWindowedSincPolyDataFilter()
        smooth.SetInputData(mesh)
        smooth.SetNumberOfIterations(int(20 + 40 * smoothing))
        smooth.SetPassBand(10.0 ** (-4.0 * smoothing))
        smooth.BoundarySmoothingOff()
        smooth.FeatureEdgeSmoothingOff()
        smooth.NonManifoldSmoothingOn()
        smooth.NormalizeCoordinatesOn()
        smooth.Update()
        mesh = smooth.GetOutput()

    points = vtk_to_numpy(mesh.GetPoints().GetData())
    points[:] = (points + origin) @ to_world[:3, :3].T + to_world[:3, 3]
    mesh.GetPoints().Modified()
    if np.linalg.det(to_world[:3, :3]) < 0:
        # Flying edges orients the triangles outwards in index space; a mirroring affine turns them inwards.
        triangles = vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).reshape(-1, 3)
        triangles[:] = triangles[:, ::-1].copy()
        mesh.GetPolys().Modified()

    # Slicer uses vtkPolyDataNormals (consistency on, no splitting); the triangles are already
    # consistent here, and this filter gives the same smooth normals ten times faster.
    normals = vtkTriangleMeshPointNormals()
    normals.SetInputData(mesh)
    normals.Update()
    return normals.GetOutput()
