"""Is this volume a CT in Hounsfield units? Refuse what the model cannot segment."""

from __future__ import annotations

import numpy as np

from ..errors import AbdoSegError
from ..image import Image

AIR_HU = -300.0  # a CT of the abdomen always holds air (outside the body, lungs, bowel gas) below this
MAX_HU = 40000.0  # beyond metal; larger values are not Hounsfield units

# The geometry a CT of the abdomen has. Thin-slice CT reaches 0.5 mm, thick reconstructions 5-10 mm
# between slices; a spacing outside these bounds is a header in metres or micrometres, not a scan.
MIN_SPACING_MM = 0.3
MAX_IN_PLANE_SPACING_MM = 10.0  # along the array's axes i and j
MAX_SLICE_SPACING_MM = 12.0  # along k
MIN_FIELD_OF_VIEW_MM = 30.0  # along each axis (the test data's DICOM series is a 40 mm slab)
MIN_LARGEST_FIELD_OF_VIEW_MM = 100.0  # along one axis at least: no organ fits a smaller cube, and below
# about 50 mm along every axis the V-Net's deepest stage (1/16 of the 3 mm model grid) has a single voxel
MAX_FIELD_OF_VIEW_MM = 2000.0  # taller than a patient; a scanner's bore is under 1 m wide
MAX_FIELD_OF_VIEW_L = 1000.0  # twice a whole-body scan of 500 x 500 x 2000 mm: bounds the model grid's voxels


def check_ct(image: Image, source: str) -> None:
    """Raise AbdoSegError (naming ``source``) unless ``image`` looks like a CT in HU.

    First its geometry (``check_geometry``) and voxel type (integer or real), then a sample
    of every 4th voxel along each axis: values finite, some below -300 HU
    (air), none beyond +-40000.
    """
    check_geometry(image, source)
    if not (np.issubdtype(image.array.dtype, np.integer) or np.issubdtype(image.array.dtype, np.floating)):
        raise AbdoSegError(f"{source} holds {image.array.dtype.name} voxels; a CT holds real Hounsfield units.")
    sample = np.asarray(image.array[::4, ::4, ::4])
    if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(image.array).all():
        raise AbdoSegError(f"{source} contains NaN or infinite values; a CT holds finite Hounsfield units.")
    low, high = np.percentile(sample, [0.5, 99.5])
    if low > AIR_HU or sample.min() < -MAX_HU or sample.max() > MAX_HU:
        raise AbdoSegError(
            f"{source} does not look like a CT in Hounsfield units (values {float(sample.min()):.0f} to "
            f"{float(sample.max()):.0f}, no air below {AIR_HU:.0f} HU); AbdoSeg segments CT only."
        )


def check_geometry(image: Image, source: str) -> None:
    """Raise AbdoSegError unless the voxel size and field of view are those of an abdominal CT.

    Voxel size (mm): ``MIN_SPACING_MM`` to ``MAX_IN_PLANE_SPACING_MM`` along i and j, to
    ``MAX_SLICE_SPACING_MM`` along k. Field of view (shape x spacing, mm): at least
    ``MIN_FIELD_OF_VIEW_MM`` and at most ``MAX_FIELD_OF_VIEW_MM`` along each axis, at least
    ``MIN_LARGEST_FIELD_OF_VIEW_MM`` along one, at most
    ``MAX_FIELD_OF_VIEW_L`` litres in all, so that the model grid fits in memory. Reads no voxel.
    """
    spacing = image.spacing
    extent = spacing * np.array(image.shape)
    grid = (f"voxels of {' x '.join(f'{s:.4g}' for s in spacing)} mm on a "
            f"{' x '.join(str(n) for n in image.shape)} grid")
    if (spacing.min() < MIN_SPACING_MM or spacing[:2].max() > MAX_IN_PLANE_SPACING_MM
            or spacing[2] > MAX_SLICE_SPACING_MM):
        raise AbdoSegError(
            f"{source} has {grid}, but a CT has {MIN_SPACING_MM:g} to {MAX_IN_PLANE_SPACING_MM:g} mm in-plane and "
            f"{MIN_SPACING_MM:g} to {MAX_SLICE_SPACING_MM:g} mm between slices (is the header's unit wrong?)."
        )
    covers = f"{' x '.join(f'{e:.0f}' for e in extent)} mm"
    if extent.min() < MIN_FIELD_OF_VIEW_MM or extent.max() < MIN_LARGEST_FIELD_OF_VIEW_MM:
        raise AbdoSegError(
            f"{source} covers only {covers} ({grid}); AbdoSeg needs at least {MIN_FIELD_OF_VIEW_MM:g} mm along each axis "
            f"and {MIN_LARGEST_FIELD_OF_VIEW_MM:g} mm along one."
        )
    if extent.max() > MAX_FIELD_OF_VIEW_MM or extent.prod() / 1e6 > MAX_FIELD_OF_VIEW_L:
        raise AbdoSegError(
            f"{source} covers {covers} ({grid}), more than a body (at most {MAX_FIELD_OF_VIEW_MM:g} mm along an axis "
            f"and {MAX_FIELD_OF_VIEW_L:g} L in all), and would not fit in memory on the model grid."
        )
