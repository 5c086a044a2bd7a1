"""Options of surface building and export: the one place that names them.

Imports nothing (no VTK, no torch), so that the command line, the Slicer scene layer and the
Slicer module (AbdoSeg.py) can all offer the same choices with the same defaults.
"""

FORMATS = ("stl", "obj", "ply", "vtp")
"""Surface file formats the engine writes (mesh_files.py)."""

SCENE_FORMATS = ("stl", "obj", "ply")
"""The formats the Slicer module exports: STL and OBJ by Slicer's own logic, PLY by mesh_files.py."""

COORDINATES = ("lps", "ras")
"""World coordinates of the points in a surface file, in mm: "lps" (x and y negated), as 3D Slicer
exports surfaces by default, or "ras", the engine's and the Slicer scene's world."""

DEFAULT_COORDINATES = "lps"
"""Slicer's export default."""

SMOOTHING_FACTOR = 0.5
"""Slicer's default "Smoothing factor": 0 (none) .. 1 (strong, shrinks a little)."""

DECIMATION_FACTOR = 0.0
"""Slicer's default "Decimation factor": 0 (none) .. 1 (as few triangles as possible)."""
