"""A body outline for anatomy maps that label structures but not the body.

TotalSegmentator, BTCV and AMOS maps label organs, vessels and (TotalSegmentator) bones and
muscles, but the skin, the subcutaneous fat and the unlabelled soft tissue are 0, like the air
outside the patient: painted as they are, the organs would float in air. ``body_outline`` draws
the body around the labelled voxels, on the model grid (canonical RAS, z the body axis):

1. in each axial slice, the convex hull of the labelled voxels;
2. a cross-section that changes slowly along z: a slice may not be more than ``TAPER`` mm
   narrower, per mm along z, than any other slice's hull (a slice where only a vessel is labelled,
   above the liver or between the kidneys and the bladder, keeps the torso of the slices nearby);
3. grown in-plane by ``wall_mm``: the body wall the maps leave unlabelled (abdominal muscles and
   subcutaneous fat), a thickness drawn once per map in ``WALL_MM``;
4. from ``wall_mm`` below the first labelled slice to ``wall_mm`` above the last one, and clipped
   to the image: the body may run off its edge, as it does in CT.
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

# Unlabelled body wall beyond the labelled structures, mm: anterior abdominal wall (muscle 10-20 mm)
# plus subcutaneous fat (10-40 mm in most adults).
WALL_MM = (20.0, 50.0)
TAPER = 0.25  # mm of cross-section radius a slice may lose per mm along the body axis


def wall_thickness_mm(name: str) -> float:
    """The body-wall thickness (mm) of the map called ``name``: drawn in ``WALL_MM``, always the same for a name."""
    return float(np.random.default_rng(zlib.crc32(f"{name}:body wall".encode())).uniform(*WALL_MM))


def body_outline(labelled: np.ndarray, spacing_mm: np.ndarray, wall_mm: float) -> np.ndarray:
    """(X, Y, Z) bool labelled voxels, voxel size ``spacing_mm`` (3,) in mm -> (X, Y, Z) bool body.

    The body holds every labelled voxel; it is empty where nothing is labelled at all.
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    core = axial_convex_hulls(labelled) | labelled
    drawn = np.flatnonzero(core.any(axis=(0, 1)))
    body = np.zeros(labelled.shape, dtype=bool)
    if not len(drawn):
        return body
    # Signed in-plane distance to each slice's hull (mm; negative inside), then its lower envelope
    # over the other slices plus TAPER x their distance along z (two sweeps).
    envelope = np.full(labelled.shape, np.inf, dtype=np.float32)
    for k in drawn:
        envelope[:, :, k] = (ndimage.distance_transform_edt(~core[:, :, k], sampling=spacing[:2])
                             - ndimage.distance_transform_edt(core[:, :, k], sampling=spacing[:2]))
    step = np.float32(TAPER * spacing[2])
    for k in range(1, labelled.shape[2]):
        np.minimum(envelope[:, :, k], envelope[:, :, k - 1] + step, out=envelope[:, :, k])
    for k in range(labelled.shape[2] - 2, -1, -1):
        np.minimum(envelope[:, :, k], envelope[:, :, k + 1] + step, out=envelope[:, :, k])
    reach = int(wall_mm // spacing[2])
    first, last = max(drawn[0] - reach, 0), drawn[-1] + reach + 1
    body[:, :, first:last] = envelope[:, :, first:last] <= wall_mm
    return body


def axial_convex_hulls(mask: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool -> (X, Y, Z) bool: inside (or on) the 2D convex hull of ``mask``'s voxel
    centres in each axial slice; False in slices whose voxels span no area (fewer than three, or
    on one line)."""
    inside = np.zeros(mask.shape, dtype=bool)
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        points = np.argwhere(mask[:, :, k])
        if len(points) < 3:
            continue
        try:
            equations = ConvexHull(points).equations  # rows (a, b, c): a x + b y + c <= 0 inside
        except QhullError:  # collinear voxels span no area
            continue
        low, high = points.min(axis=0), points.max(axis=0) + 1
        grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(low, high)), indexing="ij"), axis=-1)
        distances = grid @ equations[:, :2].T + equations[:, 2]
        inside[low[0]:high[0], low[1]:high[1], k] = np.all(distances <= 1e-6, axis=-1)
    return inside
