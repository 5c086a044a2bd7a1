"""What ``abdoseg segment`` produces, by name: the files of its output folder and the stages of its progress lines.

Standard library only: the Slicer module imports it in Slicer's GUI process, where torch may be absent.
"""

LABELS_FILE = "labels.nii.gz"
SEGMENTATION_FILE = "segmentation.seg.nrrd"
DICOM_SEG_FILE = "segmentation.dcm"
SUMMARY_FILE = "summary.json"
PREVIEW_FILE = "preview.png"
SURFACES_FOLDER = "surfaces"

READ = "read"
PREPROCESS = "preprocess"
INFERENCE = "inference"
POSTPROCESS = "postprocess"
WRITE = "write"
SURFACES = "surfaces"
PICTURE = "picture"
DONE = "done"
STAGES = (READ, PREPROCESS, INFERENCE, POSTPROCESS, WRITE, SURFACES, PICTURE, DONE)
"""The stages in the order they run ("surfaces" and "picture" only when asked for)."""
