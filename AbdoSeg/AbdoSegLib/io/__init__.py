"""File formats: image files, labelmaps, Slicer .seg.nrrd, regridding, atomic writes (layer 0)."""
