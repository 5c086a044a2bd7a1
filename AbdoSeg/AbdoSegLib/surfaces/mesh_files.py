"""Surface files: organ meshes written as STL, OBJ (+ MTL), PLY or VTP, atomically.

Every file says which world coordinates its points are in, the way 3D Slicer writes and
reads it back (``SPACE=LPS`` or ``SPACE=RAS``; millimetres):

| format | one file holds | organ colours | coordinate system |
|---|---|---|---|
| stl | the organs' triangles (binary STL) | none (STL has no standard colour) | 80-byte header text |
| obj | one group and material per organ, point normals | ``Kd`` of each material in the .mtl beside it | first comment line |
| ply | triangles, point normals (binary) | per-vertex RGB (``red green blue`` uchar) | ``comment`` lines |
| vtp | triangles, point normals, ``Label`` point array (organ id) | none (colour by ``Label``) | ``SPACE`` field data |
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkDataArray, vtkStringArray
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkFiltersCore import vtkAppendPolyData
from vtkmodules.vtkIOGeometry import vtkSTLWriter
from vtkmodules.vtkIOPLY import vtkPLYWriter
from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

from ..io.atomic import atomic_path
from ..errors import AbdoSegError
from ..organs import Organ
from .options import FORMATS

_COLOURS = "RGB"  # name of the per-point colour array given to the PLY writer


def write_meshes(meshes: dict[Organ, vtkPolyData], path: Path, space: str) -> list[Path]:
    """Write ``meshes`` (one or more organs) to one file of the format named by ``path``'s suffix.

    space: "LPS" or "RAS", the coordinates of the meshes' points (mm). Returns the files
    written: ``path``, and for OBJ also the .mtl beside it.
    """
    fmt = path.suffix.lstrip(".").lower()
    header = f"SPACE={space} units=mm AbdoSeg organs: {', '.join(organ.name for organ in meshes)}"
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


def _append(meshes: dict[Organ, vtkPolyData], colours: bool = False, label_ids: bool = False, space: str = "") -> vtkPolyData:
    """The organs' meshes as one polydata, optionally with per-point organ colours / ids and a SPACE tag."""
    append = vtkAppendPolyData()
    for organ, mesh in meshes.items():
        copy = vtkPolyData()
        copy.ShallowCopy(mesh)
        count = mesh.GetNumberOfPoints()
        if colours:
            rgb = np.tile(np.round(np.array(organ.color) * 255).astype(np.uint8), (count, 1))
            copy.GetPointData().AddArray(_named(numpy_to_vtk(rgb, deep=True), _COLOURS))
        if label_ids:
            copy.GetPointData().AddArray(_named(numpy_to_vtk(np.full(count, organ.label, np.uint8), deep=True), "Label"))
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


def _write_obj(meshes: dict[Organ, vtkPolyData], path: Path, header: str) -> list[Path]:
    """Wavefront OBJ: per organ a group ``g``/``usemtl <organ name>`` with v, vn and f lines; the .mtl holds the colours."""
    material_path = path.with_suffix(".mtl")
    with atomic_path(material_path) as temporary:
        temporary.write_text(_material_library(meshes, header))
    parts = [f"# {header}\n", f"mtllib {material_path.name}\n"]
    offset = 0
    for organ, mesh in meshes.items():
        points = vtk_to_numpy(mesh.GetPoints().GetData())
        normals = vtk_to_numpy(mesh.GetPointData().GetNormals())
        triangles = vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).reshape(-1, 3) + (offset + 1)
        parts += [
            f"g {organ.name}\n",
            f"usemtl {organ.name}\n",
            ("v %.4f %.4f %.4f\n" * len(points)) % tuple(points.ravel().tolist()),
            ("vn %.4f %.4f %.4f\n" * len(normals)) % tuple(normals.ravel().tolist()),
            ("f %d//%d %d//%d %d//%d\n" * len(triangles)) % tuple(np.repeat(triangles, 2, axis=1).ravel().tolist()),
        ]
        offset += len(points)
    with atomic_path(path) as temporary:
        temporary.write_text("".join(parts))
    return [path, material_path]


def _material_library(meshes: dict[Organ, vtkPolyData], header: str) -> str:
    """The .mtl text: one material per organ, diffuse colour ``Kd`` from the organ table."""
    lines = [f"# {header}"]
    for organ in meshes:
        red, green, blue = organ.color
        lines += [
            "",
            f"newmtl {organ.name}",
            "Ka 0 0 0",
            f"Kd {red:.6f} {green:.6f} {blue:.6f}",
            "Ks 0.2 0.2 0.2",
            "Ns 20",
            "d 1",
            "illum 2",
        ]
    return "\n".join(lines) + "\n"
