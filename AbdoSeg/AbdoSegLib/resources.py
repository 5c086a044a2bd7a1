"""Paths of the files shipped with the module (sample data, default model)."""

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
SAMPLE_CT = RESOURCES / "SampleData" / "AbdoSegSampleCT.nii.gz"
SAMPLE_REFERENCE = RESOURCES / "SampleData" / "AbdoSegSampleReference.nii.gz"
DEFAULT_BUNDLE = RESOURCES / "Models" / "abdoseg-vnet.safetensors"
SAMPLE_CASE_ID = "ts_example"  # the sample's case name in training records (shared/data/ts_example)
