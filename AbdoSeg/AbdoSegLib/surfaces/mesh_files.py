"""Surface files: organ (or other named) meshes written as STL, OBJ (+ MTL), PLY or VTP, atomically.

Every file says which world coordinates its points are in, the way 3D Slicer writes and
reads it back (``SPACE=LPS`` or ``SPACE=RAS``; millimetres):

| format | one file holds | colours | coordinate system |
|---|---|---|---|
| stl | the meshes' triangles (binary STL) | none (STL has no standard colour) | 80-byte header text |
| obj | one group and material per mesh, point normals | ``Kd`` of each material in the .mtl beside it | first comment line |
| ply | triangles, point normals (binary) | per-vertex RGB (``red green blue`` uchar) | ``comment`` lines |
| vtp | triangles, point normals, ``Label`` point array (organ id) | none (colour by ``Label``) | ``SPACE`` field data |

The engine writes organs (``write_meshes``); the Slicer scene writes its segments' PLY files with
the same code (``write_named_meshes``), naming and colouring them as the segments are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkDataArray, vtkStringArray
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkFiltersCore import vtkAppendPolyData
from vtkmodules.vtkIOGeometry import vtkSTLWriter
from vtkmodules.vtkIOPLY import vtkPLYWriter
from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

from ..errors import AbdoSegError
from ..io.atomic import atomic_path
from ..organs import Organ
from .options import FORMATS

_COLOURS = "RGB"  # name of the per-point colour array given to the PLY writer


@dataclass(frozen=True)
class NamedMesh:
    """One mesh of a surface file and what the file says about it.

    name: OBJ group and material; color: RGB in 0..1 (OBJ material, PLY vertex colours);
    mesh: triangles in the file's coordinates (mm), with point normals (OBJ needs them);
    label: the VTP ``Label`` value, the organ id (0: a structure that is not an organ).
    """

    name: str
    color: tuple[float, float, float]
    mesh: vtkPolyData
    label: int = 0


def write_meshes(meshes: dict[Organ, vtkPolyData], path: Path, space: str) -> list[Path]:
    """Write organ meshes (one or more organs) to one file: ``write_named_meshes`` with each organ's name, colour and id."""
    return write_named_meshes([NamedMesh(organ.name, organ.color, mesh, organ.label) for organ, mesh in meshes.items()], path, space)


def write_named_meshes(meshes: list[NamedMesh], path: Path, space: str) -> list[Path]:
    """Write ``meshes`` to one file of the format named by ``path``'s suffix (see the table above).

    space: "LPS" or "RAS", the coordinates of the meshes' points (mm), written into the file
    as ``SPACE=LPS`` / ``SPACE=RAS``, which 3D Slicer reads back. Returns the files written:
    ``path``, and for OBJ also the .mtl beside it.
    """
    fmt = path.suffix.lstrip(".").lower()
    header = f"SPACE={space} units=mm AbdoSeg surfaces: {', '.join(surface.name for surface in meshes)}"
    if fmt == "obj":
        return _write_obj(meshes, path, header)
    with atomic_path(path) as temporary:
        if fmt == "stl":
            writer = vtkSTLWriter()
            writer.SetHeader(header[:80])
            writer.SetFileTypeToBinary()
            writer.SetInputData(_append(meshes))
        elif fmt == "ply":
            writer = vtkPLYWriter()
            writer.AddComment(header)
            writer.SetFileTypeToBinary()
            writer.SetArrayName(_COLOURS)
            writer.SetColorModeToDefault()
            writer.EnableAlphaOff()
            writer.SetInputData(_append(meshes, colours=True))
        elif fmt == "vtp":
            writer = vtkXMLPolyDataWriter()
            writer.SetCompressorTypeToZLib()
            writer.SetDataModeToAppended()
            writer.SetInputData(_append(meshes, label_ids=True, space=space))
        else:
            raise ValueError(f"unknown surface format {fmt!r}; the formats are {FORMATS}")
        writer.SetFileName(str(temporary))
        if not writer.Write():
            raise AbdoSegError(f"could not write {path}; is the disk full or the folder read-only?")
    return [path]


def _append(meshes: list[NamedMesh], colours: bool = False, label_ids: bool = False, space: str = "") -> vtkPolyData:
    """The meshes as one polydata, optionally with per-point colours / organ ids and a SPACE tag."""
    append = vtkAppendPolyData()
    for surface in meshes:
        copy = vtkPolyData()
        copy.ShallowCopy(surface.mesh)
        count = surface.mesh.GetNumberOfPoints()
        if colours:
            rgb = np.tile(np.round(np.clip(surface.color, 0.0, 1.0) * 255).astype(np.uint8), (count, 1))
            copy.GetPointData().AddArray(_named(numpy_to_vtk(rgb, deep=True), _COLOURS))
        if label_ids:
            copy.GetPointData().AddArray(_named(numpy_to_vtk(np.full(count, surface.label, np.uint8), deep=True), "Label"))
        append.AddInputData(copy)
    append.Update()
    merged = append.GetOutput()
    if space:
        tag = vtkStringArray()
        tag.SetName("SPACE")
        tag.InsertNextValue(space)
        merged.GetFieldData().AddArray(tag)
    return merged


def _named(array: vtkDataArray, name: str) -> vtkDataArray:
    array.SetName(name)
    return array


def _write_obj(meshes: list[NamedMesh], path: Path, header: str) -> list[Path]:
    """Wavefront OBJ: per mesh a group ``g``/``usemtl <name>`` with v, vn and f lines; the .mtl holds the colours."""
    material_path = path.with_suffix(".mtl")
    with atomic_path(material_path) as temporary:
        temporary.write_text(_material_library(meshes, header))
    text = [f"# {header}\n", f"mtllib {material_path.name}\n"]
    offset = 0
    for surface in meshes:
        points = vtk_to_numpy(surface.mesh.GetPoints().GetData())
        normals = vtk_to_numpy(surface.mesh.GetPointData().GetNormals())
        triangles = vtk_to_numpy(surface.mesh.GetPolys().GetConnectivityArray()).reshape(-1, 3) + (offset + 1)
        text += [
            f"g {surface.name}\n",
            f"usemtl {surface.name}\n",
            ("v %.4f %.4f %.4f\n" * len(points)) % tuple(points.ravel().tolist()),
            ("vn %.4f %.4f %.4f\n" * len(normals)) % tuple(normals.ravel().tolist()),
            ("f %d//%d %d//%d %d//%d\n" * len(triangles)) % tuple(np.repeat(triangles, 2, axis=1).ravel().tolist()),
        ]
        offset += len(points)
    with atomic_path(path) as temporary:
        temporary.write_text("".join(text))
    return [path, material_path]


def _material_library(meshes: list[NamedMesh], header: str) -> str:
    """The .mtl text: one material per mesh, diffuse colour ``Kd`` its colour."""
    lines = [f"# {header}"]
    for surface in meshes:
        red, green, blue = surface.color
        lines += [
            "",
            f"newmtl {surface.name}",
            "Ka 0 0 0",
            f"Kd {red:.6f} {green:.6f} {blue:.6f}",
            "Ks 0.2 0.2 0.2",
            "Ns 20",
            "d 1",
            "illum 2",
        ]
    return "\n".join(lines) + "\n"
