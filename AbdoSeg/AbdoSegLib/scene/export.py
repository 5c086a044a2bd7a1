"""Closed surfaces of a segmentation node written to STL, OBJ (Slicer's logic) or PLY files."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtkmodules.util.numpy_support import numpy_to_vtk

from ..errors import AbdoSegError
from .segmentations import SEGMENTATION_NAME, create_closed_surfaces


SURFACE_FORMATS = ("STL", "OBJ", "PLY")
"""Surface file formats of ``export_surfaces``: STL and OBJ by Slicer's logic, PLY written here."""


def export_surfaces(
    segmentation_node,
    folder: str | Path,
    fmt: str = "STL",
    lps: bool = True,
    merge: bool = False,
    segment_ids: list[str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write segments' closed surfaces to ``folder`` (which must exist); returns the files written.

    fmt: "STL" (one file per segment, or one merged file), "OBJ" (one .obj holding every
    segment, with its .mtl of segment colours) through Slicer's
    ``ExportSegmentsClosedSurfaceRepresentationToFiles``; "PLY" (binary, per-vertex segment
    colours) written here the same way. lps: LPS coordinates (Slicer's default) or RAS, in mm;
    the file says which ("SPACE=LPS" in the STL header, the OBJ and PLY comments). merge: one
    file for all segments (STL and PLY; OBJ always holds all). File names follow Slicer:
    ``<segmentation name>_<segment name>.stl``, ``<segmentation name>.obj``.

    segment_ids: the segments to write; by default every segment with a non-empty surface.
    Closed surfaces are made first if the segmentation has none (``create_closed_surfaces``).
    The files are written in a staging folder inside ``folder`` and moved in when all are
    done; an existing file is not replaced unless ``overwrite``.
    """
    fmt = fmt.upper()
    if fmt not in SURFACE_FORMATS:
        raise ValueError(f"fmt must be one of {SURFACE_FORMATS}, got {fmt!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise AbdoSegError(f"the export folder {folder} does not exist.")
    segmentation = segmentation_node.GetSegmentation()
    closed_surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    if not segmentation.ContainsRepresentation(closed_surface):
        create_closed_surfaces(segmentation_node)
    if segment_ids is None:
        segment_ids = [
            segment_id
            for segment_id in segmentation.GetSegmentIDs()
            if _has_points(segmentation.GetSegment(segment_id).GetRepresentation(closed_surface))
        ]
    if not segment_ids:
        raise AbdoSegError(f"the segmentation {segmentation_node.GetName()} has no segment with a surface to export.")
    ids = vtk.vtkStringArray()
    for segment_id in segment_ids:
        if segmentation.GetSegment(segment_id) is None:
            raise AbdoSegError(f"the segmentation {segmentation_node.GetName()} has no segment with the ID {segment_id!r}.")
        ids.InsertNextValue(segment_id)

    staging = Path(tempfile.mkdtemp(prefix=".abdoseg-export-", dir=folder))
    try:
        if fmt == "PLY":
            _write_ply(segmentation_node, ids, staging, lps, merge)
        elif not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsClosedSurfaceRepresentationToFiles(
            str(staging), segmentation_node, ids, fmt, lps, 1.0, merge
        ):
            raise AbdoSegError(f"Slicer could not export the surfaces of {segmentation_node.GetName()} to {folder}.")
        written = sorted(staging.iterdir())
        targets = [folder / path.name for path in written]
        existing = [target for target in targets if target.exists()]
        if existing and not overwrite:
            raise AbdoSegError(f"{existing[0]} already exists; choose another folder or allow replacing files.")
        for path, target in zip(written, targets):
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


def _has_points(poly_data) -> bool:
    return poly_data is not None and poly_data.GetNumberOfPoints() > 0


def _safe_file_name(name: str) -> str:
    """A node or segment name as Slicer's ``vtkSlicerSegmentationsModuleLogic::GetSafeFileName`` makes it."""
    return "".join(re.findall(r"[-A-Za-z0-9 _.()$!~#'%^{}]", name)).strip()


def _write_ply(segmentation_node, segment_ids, folder: Path, lps: bool, merge: bool) -> None:
    """Binary PLY files of segments' closed surfaces (parent transform applied), per-vertex RGB."""
    space = "LPS" if lps else "RAS"
    segmentation = segmentation_node.GetSegmentation()
    to_space = vtk.vtkTransform()
    if lps:
        to_space.Scale(-1.0, -1.0, 1.0)
    base = _safe_file_name(segmentation_node.GetName() or SEGMENTATION_NAME)
    meshes = []
    for index in range(segment_ids.GetNumberOfValues()):
        segment_id = segment_ids.GetValue(index)
        poly_data = vtk.vtkPolyData()
        if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentClosedSurfaceRepresentation(segmentation_node, segment_id, poly_data):
            raise AbdoSegError(f"Slicer could not make the closed surface of the segment {segment_id!r}.")
        transform = vtk.vtkTransformPolyDataFilter()
        transform.SetTransform(to_space)
        transform.SetInputData(poly_data)
        triangles = vtk.vtkTriangleFilter()
        triangles.SetInputConnection(transform.GetOutputPort())
        triangles.Update()
        mesh = triangles.GetOutput()
        colour = segmentation.GetSegment(segment_id).GetColor()
        rgb = np.tile(np.round(np.clip(colour, 0.0, 1.0) * 255).astype(np.uint8), (mesh.GetNumberOfPoints(), 1))
        colours = numpy_to_vtk(rgb, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
        colours.SetName("RGB")
        mesh.GetPointData().AddArray(colours)
        meshes.append((segmentation.GetSegment(segment_id).GetName(), mesh))
    if merge:
        append = vtk.vtkAppendPolyData()
        for _name, mesh in meshes:
            append.AddInputData(mesh)
        append.Update()
        meshes = [(None, append.GetOutput())]
    for segment_name, mesh in meshes:
        path = folder / (f"{base}.ply" if segment_name is None else f"{base}_{segment_name}.ply")
        writer = vtk.vtkPLYWriter()
        writer.SetFileName(str(path))
        writer.SetInputData(mesh)
        writer.SetFileTypeToBinary()
        writer.AddComment(f"3D Slicer output. SPACE={space}")
        writer.SetArrayName("RGB")
        writer.SetColorModeToDefault()
        writer.EnableAlphaOff()
        if not writer.Write():
            raise AbdoSegError(f"could not write {path}.")
