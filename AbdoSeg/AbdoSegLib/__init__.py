"""AbdoSeg engine: segment the liver, kidneys and spleen in abdominal CT (no Slicer needed)."""

__version__ = "0.1.0"
