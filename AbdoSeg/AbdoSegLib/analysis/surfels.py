"""Surfels of a boolean mask and their areas, as DeepMind's ``surface-distance`` defines them.

A surfel sits at each voxel corner whose 2x2x2 neighbourhood of voxels holds both inside and
outside voxels. Its 8-bit neighbourhood code has bit ``7 - (4a + 2b + c)`` set when the voxel at
offset (a, b, c) of the neighbourhood is inside (``NEIGHBOURHOOD_KERNEL``, surface-distance's bit
order), and its weight is the area (mm^2) of the marching-cubes surface of that neighbourhood, the
cube whose corners are the 8 voxel centres.

The areas are computed here rather than read from a table: VTK's marching cubes triangulates each
of the 256 neighbourhoods once on a unit grid, giving each triangle's area vector (normal times
area). On a grid with spacing (s0, s1, s2) mm a triangle's area vector scales by
(s1 s2, s0 s2, s0 s1), so the area of any spacing follows from the unit vectors exactly. Where a
face of the cube is ambiguous (two diagonal corners inside, two outside), marching cubes'
original table, which VTK uses, keeps the inside corners apart; surface-distance gives a code and
its complement the same surface, the one that keeps the corners of the smaller side apart. So a
code with more than four corners inside takes its complement's triangles. Testing/test_metrics.py
checks the areas against surface-distance's for several spacings.
"""

from __future__ import annotations

import functools

import numpy as np

NEIGHBOURHOOD_KERNEL = np.array([128, 64, 32, 16, 8, 4, 2, 1], dtype=np.uint8).reshape(2, 2, 2)
"""The bit of each voxel of a 2x2x2 neighbourhood in its code, uint8 (2, 2, 2): 128 at (0, 0, 0), 1 at (1, 1, 1)."""


def surfel_codes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The surfel map of a boolean mask of shape (I, J, K): (border, code), both (I+1, J+1, K+1).

    code[i, j, k] is the neighbourhood code of the voxel corner shared by voxels i-1..i, j-1..j,
    k-1..k (outside the array counts as background); border marks the corners with both inside and
    outside voxels around them.
    """
    padded = np.pad(mask, 1).view(np.uint8)
    size = tuple(n + 1 for n in mask.shape)
    code = np.zeros(size, dtype=np.uint8)
    for (a, b, c), weight in np.ndenumerate(NEIGHBOURHOOD_KERNEL):
        code |= padded[a : a + size[0], b : b + size[1], c : c + size[2]] * weight
    return (code != 0) & (code != 255), code


@functools.lru_cache(maxsize=8)
def surfel_areas(spacing: tuple[float, float, float]) -> np.ndarray:
    """Surface area in mm^2 of each of the 256 neighbourhood codes, float64 (256,), for voxel spacing (s0, s1, s2) mm."""
    codes, vectors = _unit_area_vectors()
    s0, s1, s2 = spacing
    scaled = vectors * np.array([s1 * s2, s0 * s2, s0 * s1])
    areas = np.bincount(codes, weights=np.linalg.norm(scaled, axis=1), minlength=256)
    areas.flags.writeable = False  # shared by every caller through the cache
    return areas


@functools.lru_cache(maxsize=1)
def _unit_area_vectors() -> tuple[np.ndarray, np.ndarray]:
    """The marching-cubes triangles of every code on a unit grid: (code of each triangle (T,), area vector (T, 3))."""
    # VTK is loaded when a comparison first needs the table, not when the module is imported.
    from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkFiltersCore import vtkMarchingCubes

    bits = NEIGHBOURHOOD_KERNEL.ravel(order="F")  # VTK's point order: the first axis varies fastest
    codes, vectors = [], []
    for code in range(256):
        inside = (code & bits) != 0
        if inside.sum() > 4:
            inside = ~inside
        image = vtkImageData()
        image.SetDimensions(2, 2, 2)
        image.GetPointData().SetScalars(numpy_to_vtk(inside.astype(np.float64), deep=True))
        cubes = vtkMarchingCubes()
        cubes.SetInputData(image)
        cubes.SetValue(0, 0.5)
        cubes.ComputeNormalsOff()
        cubes.Update()
        surface = cubes.GetOutput()
        if surface.GetNumberOfPolys() == 0:
            continue
        corners = vtk_to_numpy(surface.GetPoints().GetData()).astype(np.float64)[vtk_to_numpy(surface.GetPolys().GetConnectivityArray()).reshape(-1, 3)]
        vectors.append(0.5 * np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]))
        codes.append(np.full(len(corners), code))
    return np.concatenate(codes), np.concatenate(vectors)
