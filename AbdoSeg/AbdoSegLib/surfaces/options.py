"""Options of surface building and export, without loading VTK (the command line offers them)."""

FORMATS = ("stl", "obj", "ply", "vtp")
"""Surface file formats AbdoSeg writes."""

SMOOTHING_FACTOR = 0.5
"""Slicer's default "Smoothing factor": 0 (none) .. 1 (strong, shrinks a little)."""

DECIMATION_FACTOR = 0.0
"""Slicer's default "Decimation factor": 0 (none) .. 1 (as few triangles as possible)."""
