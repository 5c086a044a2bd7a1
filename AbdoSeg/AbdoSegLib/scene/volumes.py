"""Volume nodes <-> engine Images and files: the only place where Slicer's (K, J, I) voxel order meets the engine's (I, J, K)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import vtk
from vtkmodules.util.numpy_support import vtk_to_numpy

from ..errors import AbdoSegError
from ..image import Image


def write_volume(volume_node, path: str | Path, compress: bool = False) -> Path:
    """Write a volume node's voxels and geometry (IJK to RAS, without any parent transform) to ``path``.

    The file format follows the name (``.nrrd`` is what the segmentation command reads fastest).
    A storage node of its own does the writing, so the volume node keeps its own storage
    node and file name (``slicer.util.saveNode`` would point the node at ``path``).
    """
    path = Path(path)
    if volume_node is None or volume_node.GetImageData() is None:
        raise AbdoSegError("the volume to write holds no image data.")
    storage_node = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage_node.SetFileName(str(path))
    storage_node.SetUseCompression(1 if compress else 0)
    if not storage_node.WriteData(volume_node):
        raise AbdoSegError(f"could not write the volume {volume_node.GetName()} to {path}.")
    return path


def image_from_volume(volume_node) -> Image:
    """A copy of a volume node's voxels as an engine Image: array (I, J, K), affine IJK to RAS (mm).

    The parent transform, if any, is not applied (the geometry is the node's own).
    """
    image_data = volume_node.GetImageData()
    if image_data is None:
        raise AbdoSegError(f"the volume {volume_node.GetName()} holds no image data.")
    dims = image_data.GetDimensions()
    scalars = image_data.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise AbdoSegError(f"the volume {volume_node.GetName()} has {scalars.GetNumberOfComponents()} values per voxel; a scalar volume is needed.")
    array = vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0).copy()
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return Image(array, array_from_matrix(matrix))


def scene_of(*candidates):
    """The first node's scene, or a scene given as such."""
    for candidate in candidates:
        if candidate is None:
            continue
        if isinstance(candidate, slicer.vtkMRMLScene):
            return candidate
        if candidate.GetScene() is not None:
            return candidate.GetScene()
    raise ValueError("no MRML scene: give a segmentation node, a reference volume node or a scene")


def array_from_matrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def remove_volume_node(volume_node) -> None:
    scene = volume_node.GetScene()
    if scene is None:
        return
    for index in reversed(range(volume_node.GetNumberOfDisplayNodes())):
        display_node = volume_node.GetNthDisplayNode(index)
        if display_node is None:
            continue
        colour_node = display_node.GetColorNode()
        # The export makes a colour table for the labelmap; Slicer's built-in tables are singletons and stay.
        if colour_node is not None and not colour_node.GetSingletonTag():
            scene.RemoveNode(colour_node)
        scene.RemoveNode(display_node)
    if volume_node.GetStorageNode() is not None:
        scene.RemoveNode(volume_node.GetStorageNode())
    scene.RemoveNode(volume_node)
