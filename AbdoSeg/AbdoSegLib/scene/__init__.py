"""AbdoSeg results in a 3D Slicer MRML scene (layer 2 of DESIGN.md).

Turns an organ labelmap into a segmentation node (named, coloured segments with standard
terminology, on the input volume's geometry), builds closed surfaces with Slicer's own
converter, exports them with Slicer's segmentation logic, compares two segmentation nodes
with the engine's metrics and fills a table node.

Only Slicer's MRML and logic classes are used (``slicer.vtkMRML*``, ``vtkSegmentationCore``,
``vtkSlicerSegmentationsModuleLogic``'s static methods); nothing here needs ``slicer.app``,
``slicer.mrmlScene``, ``slicer.modules``, qt or ctk, so the module runs in 3D Slicer and under
the ``slicer-core`` package from PyPI alike. Every function takes its scene from the nodes it is
given (or as an argument).

Axis order: an engine ``Image`` holds ``array[i, j, k]``; Slicer's image data (and
``slicer.util.arrayFromVolume``) is ``[k, j, i]``; the conversion happens only in
``volumes.image_from_volume`` and ``segmentations._oriented_image``. World coordinates are RAS millimetres, as in
Slicer's scene; surface files are written in LPS (Slicer's default) or RAS, as asked.

The export formats and the smoothing factor's default are the engine's, in
``AbdoSegLib.surfaces.options`` (``SCENE_FORMATS``, ``COORDINATES``, ``SMOOTHING_FACTOR``).
"""

from .comparison import METRICS_COLUMNS, compare_segmentations, metrics_table
from .export import export_surfaces
from .segmentations import (
    SEGMENTATION_NAME,
    create_closed_surfaces,
    labelmap_from_segments,
    organ_segments,
    register_converter_rules,
    segmentation_from_labelmap,
)
from .volumes import image_from_volume, write_volume

__all__ = [
    "METRICS_COLUMNS", "SEGMENTATION_NAME", "compare_segmentations",
    "create_closed_surfaces", "export_surfaces", "image_from_volume", "labelmap_from_segments",
    "metrics_table", "organ_segments", "register_converter_rules", "segmentation_from_labelmap", "write_volume",
]
