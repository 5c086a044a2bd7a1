"""Per-organ measurements of a labelmap on its CT: volume (mL) and mean HU."""

from __future__ import annotations

import numpy as np

from ..image import Image
from ..organs import NUM_CLASSES, ORGANS


def organ_measurements(labels: Image, ct: Image) -> dict[str, dict]:
    """{organ name: {"volume_ml", "voxels", "mean_hu"}}; mean_hu is None for an absent organ.

    labels and ct share one grid (labels: uint8 ids, ct: HU).
    """
    # Ravel both in one memory order (a view when they share it) and sum only organ voxels.
    order = "F" if labels.array.flags.f_contiguous and ct.array.flags.f_contiguous else "C"
    ids = labels.array.ravel(order=order)
    organ_voxels = np.flatnonzero(ids)
    ids = ids[organ_voxels]
    counts = np.bincount(ids, minlength=NUM_CLASSES)
    sums = np.bincount(ids, weights=ct.array.ravel(order=order)[organ_voxels], minlength=NUM_CLASSES)
    result = {}
    for organ in ORGANS:
        n = int(counts[organ.label])
        result[organ.name] = {
            "volume_ml": round(n * labels.voxel_volume_ml, 2),
            "voxels": n,
            "mean_hu": round(float(sums[organ.label] / n), 1) if n else None,
        }
    return result
