"""Closed surfaces of a segmentation node written to STL, OBJ (Slicer's logic) or PLY (the engine's writer) files."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import slicer
import vtk

from ..errors import AbdoSegError
from ..surfaces.mesh_files import NamedMesh, write_named_meshes
from ..surfaces.options import SCENE_FORMATS
from .segmentations import SEGMENTATION_NAME, create_closed_surfaces


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

    fmt: one of ``surfaces.options.SCENE_FORMATS``, any case: "stl" (one file per segment, or
    one merged file), "obj" (one .obj holding every segment, with its .mtl of segment colours)
    through Slicer's ``ExportSegmentsClosedSurfaceRepresentationToFiles``; "ply" (binary,
    per-vertex segment colours) by the engine's ``mesh_files.write_named_meshes``, the same way.
    lps: LPS coordinates (Slicer's default) or RAS, in mm; the file says which ("SPACE=LPS" in
    the STL header, the OBJ and PLY comments). merge: one file for all segments (STL and PLY;
    OBJ always holds all). File names follow Slicer: ``<segmentation name>_<segment name>.stl``,
    ``<segmentation name>.obj``.

    segment_ids: the segments to write; by default every segment with a non-empty surface.
    Closed surfaces are made first if the segmentation has none (``create_closed_surfaces``).
    The files are written in a staging folder inside ``folder`` and moved in when all are
    done; an existing file is not replaced unless ``overwrite``.
    """
    if fmt.lower() not in SCENE_FORMATS:
        raise ValueError(f"fmt must be one of {SCENE_FORMATS} (any case), got {fmt!r}")
    fmt = fmt.upper()
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
            _write_ply(segmentation_node, segment_ids, staging, lps, merge)
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


def _write_ply(segmentation_node, segment_ids: list[str], folder: Path, lps: bool, merge: bool) -> None:
    """PLY files of segments' closed surfaces (parent transform applied) in the segments' names and colours."""
    segmentation = segmentation_node.GetSegmentation()
    meshes = []
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        meshes.append(NamedMesh(segment.GetName(), tuple(segment.GetColor()), _surface_in_space(segmentation_node, segment_id, lps)))
    base = _safe_file_name(segmentation_node.GetName() or SEGMENTATION_NAME)
    space = "LPS" if lps else "RAS"
    if merge:
        write_named_meshes(meshes, folder / f"{base}.ply", space)
    else:
        for mesh in meshes:
            write_named_meshes([mesh], folder / f"{base}_{mesh.name}.ply", space)


def _surface_in_space(segmentation_node, segment_id: str, lps: bool):
    """A segment's closed surface in world coordinates, LPS (x and y negated) or RAS, as triangles; as Slicer's STL export makes it."""
    poly_data = vtk.vtkPolyData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentClosedSurfaceRepresentation(segmentation_node, segment_id, poly_data):
        raise AbdoSegError(f"Slicer could not make the closed surface of the segment {segment_id!r}.")
    to_space = vtk.vtkTransform()
    if lps:
        to_space.Scale(-1.0, -1.0, 1.0)
    transform = vtk.vtkTransformPolyDataFilter()
    transform.SetTransform(to_space)
    transform.SetInputData(poly_data)
    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputConnection(transform.GetOutputPort())
    triangles.Update()
    return triangles.GetOutput()
