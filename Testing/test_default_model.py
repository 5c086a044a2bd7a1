"""The bundled default model: a trained bundle that segments the bundled sample, end to end."""

from __future__ import annotations

import json

import pytest
import vtk

from AbdoSegLib.analysis.fluid import fluid_warning
from AbdoSegLib.analysis.metrics import dice_per_organ
from AbdoSegLib.cli import main as abdoseg
from AbdoSegLib.demo import main as demo
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.bundle import load_bundle
from AbdoSegLib.organs import ORGAN_NAMES, ORGANS
from AbdoSegLib.outputs import LABELS_FILE, PREVIEW_FILE, SUMMARY_FILE, SURFACES_FOLDER
from AbdoSegLib.resources import DEFAULT_BUNDLE, SAMPLE_CT, SAMPLE_REFERENCE

# Floors under the figures measured when the bundle was made (model card: liver 0.949, right
# kidney 0.905, left kidney 0.940, spleen 0.942 on the sample, which it never trained on); they
# catch a broken pipeline or bundle, not a small change in quality. Without the clean-up's -30 HU
# rule the right kidney measures 0.826, below its floor.
SAMPLE_DICE_FLOOR = {"liver": 0.91, "right_kidney": 0.89, "left_kidney": 0.91, "spleen": 0.92}


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "sample"
    assert abdoseg(["segment", str(SAMPLE_CT), "-o", str(out), "--surfaces", "stl", "--png", "--progress", "none"]) == 0
    return out


def test_default_bundle_is_a_small_trained_model():
    assert DEFAULT_BUNDLE.stat().st_size < 25 * 1024 * 1024
    bundle = load_bundle(DEFAULT_BUNDLE)
    training, validation = bundle.metadata["training"], bundle.metadata["validation"]
    assert training["train_cases"] and training["log"], "the bundle records how it was trained"
    assert set(validation["dice"]) and validation["mean_dice"] > 0.5
    assert not set(training["train_cases"]) & set(training["validation_cases"])


def test_default_model_segments_the_sample(segmented):
    predicted = read_image(segmented / LABELS_FILE).array
    reference = read_image(SAMPLE_REFERENCE).array
    scores = dice_per_organ(predicted, reference)
    for organ, floor in SAMPLE_DICE_FLOOR.items():
        assert scores[organ] >= floor, scores
    qa = json.loads((segmented / SUMMARY_FILE).read_text())["qa"]
    # Volumes, extents, confidence and laterality all plausible. The one warning is fluid in the right kidney's label:
    # its renal sinus, which the bundle draws as kidney and the reference leaves out (model card, Known limits).
    fluid = qa["fluid_regions"]
    assert [name for name, region in fluid.items() if region] == ["right_kidney"]
    assert qa["warnings"] == [fluid_warning("right kidney", fluid["right_kidney"])]
    laterality = qa["laterality"]
    liver_vs_spleen = [check for check in laterality["checks"] if "spleen" in check["x_mm"] and "liver" in check["x_mm"]]
    assert liver_vs_spleen and liver_vs_spleen[0]["ok"]


def test_segment_writes_surfaces_and_a_picture(segmented):
    labels = read_image(segmented / LABELS_FILE)
    found = [organ.name for organ in ORGANS if (labels.array == organ.label).any()]
    files = sorted((segmented / SURFACES_FOLDER).glob("*.stl"))
    assert {"liver", "spleen"} <= set(found)
    assert [f.name for f in files] == sorted(f"{name}_LPS.stl" for name in found)
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(segmented / SURFACES_FOLDER / "liver_LPS.stl"))
    reader.Update()
    mass = vtk.vtkMassProperties()
    mass.SetInputData(reader.GetOutput())
    voxel_ml = float((labels.array == 1).sum()) * labels.voxel_volume_ml
    assert mass.GetVolume() / 1000 == pytest.approx(voxel_ml, rel=0.03)
    assert (segmented / PREVIEW_FILE).stat().st_size > 10_000


def test_demo_prints_volumes_and_dice(tmp_path, capsys):
    assert demo([str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    volumes, dice_section = out.split("Dice vs reference")
    rows = {line.split()[0]: line.split()[1] for line in dice_section.splitlines() if line.split()[:1] and line.split()[0] in ORGAN_NAMES}
    assert set(rows) == set(ORGAN_NAMES)
    assert float(rows["liver"]) > 0.5 and float(rows["spleen"]) > 0.5
    assert all(organ in volumes for organ in ORGAN_NAMES)
