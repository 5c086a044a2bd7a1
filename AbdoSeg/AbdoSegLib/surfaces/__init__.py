"""Organ surfaces: meshes from labelmaps, mesh files, their options, preview pictures (layer 0)."""
