"""Is this volume a CT in Hounsfield units? Refuse what the model cannot segment."""

from __future__ import annotations

import numpy as np

from ..errors import AbdoSegError
from ..image import Image

AIR_HU = -300.0  # a CT of the abdomen always holds air (outside the body, lungs, bowel gas) below this
MAX_HU = 40000.0  # beyond metal; larger values are not Hounsfield units


def check_ct(image: Image, source: str) -> None:
    """Raise AbdoSegError (naming ``source``) unless ``image`` looks like a CT in HU.

    Checks a sample of every 4th voxel along each axis: values finite, some below -300 HU
    (air), none beyond +-40000.
    """
    sample = np.asarray(image.array[::4, ::4, ::4])
    if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(image.array).all():
        raise AbdoSegError(f"{source} contains NaN or infinite values; a CT holds finite Hounsfield units.")
    low, high = np.percentile(sample, [0.5, 99.5])
    if low > AIR_HU or sample.min() < -MAX_HU or sample.max() > MAX_HU:
        raise AbdoSegError(
            f"{source} does not look like a CT in Hounsfield units (values {float(sample.min()):.0f} to "
            f"{float(sample.max()):.0f}, no air below {AIR_HU:.0f} HU); AbdoSeg segments CT only."
        )
