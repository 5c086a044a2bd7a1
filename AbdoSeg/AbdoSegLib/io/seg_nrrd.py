"""Slicer segmentation files (.seg.nrrd): one segment per organ, named, coloured, with terminology."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicerio

from ..image import Image
from ..organs import ORGANS
from .atomic import atomic_path
from .itk_grid import LPS_TO_RAS


def write_segmentation(labels: Image, path: str | Path) -> None:
    """Write a labelmap (uint8 organ ids) as a Slicer .seg.nrrd on the labelmap's grid.

    Every organ of the table gets a segment (an organ that was not found is an empty
    segment, so the file always has the same four segments).
    """
    segments = [
        {
            "id": organ.name,
            "labelValue": organ.label,
            "layer": 0,
            "name": organ.title,
            "color": list(organ.color),
            "terminology": organ.terminology,
            "status": "completed",
        }
        for organ in ORGANS
    ]
    segmentation = {
        "voxels": np.asarray(labels.array, dtype=np.uint8),
        "ijkToLPS": LPS_TO_RAS @ labels.affine,
        "encoding": "gzip",
        "segments": segments,
    }
    with atomic_path(path) as temporary:
        slicerio.write_segmentation(str(temporary), segmentation, compression_level=1)
