"""QA of a labelmap: organ volumes against typical adult ranges and laterality in world space,
on real cases (the bundled sample, Testing/Data) and on synthetic mirrors and boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from AbdoSegLib.analysis.qa import TYPICAL_VOLUME_ML, qa_report
from AbdoSegLib.analysis.summary import organ_measurements
from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.organs import ORGAN_NAMES, organ_by_name
from AbdoSegLib.resources import SAMPLE_CT, SAMPLE_REFERENCE

LIVER, RIGHT_KIDNEY, LEFT_KIDNEY, SPLEEN = (organ_by_name(n).label for n in ("liver", "right_kidney", "left_kidney", "spleen"))


@pytest.fixture(scope="module")
def ts_labels() -> Image:
    """ts_example's labels: correct anatomy, all four organs, RAS voxel order, 3 mm."""
    return read_image(SAMPLE_REFERENCE)


@pytest.fixture(scope="module")
def msd_labels(test_data: Path) -> Image:
    """msd_spleen_8's label: only a spleen, mirrored in world space by its header (it lies on the patient's right)."""
    return read_image(test_data / "msd_spleen_8" / "label.nii.gz")


def laterality_warnings(report: dict) -> list[str]:
    return [w for w in report["warnings"] if "left-right flipped" in w]


def test_ras_x_grows_towards_the_patients_right_on_real_anatomy(ts_labels):
    # The sign every laterality rule relies on, read off a correctly oriented real case.
    centroids = qa_report(ts_labels)["laterality"]["centroids_ras_mm"]
    assert centroids["liver"][0] > 0 > centroids["spleen"][0]
    assert centroids["right_kidney"][0] > 0 > centroids["left_kidney"][0]


def test_correct_anatomy_passes_without_any_warning(ts_labels):
    for ct in (None, read_image(SAMPLE_CT)):
        report = qa_report(ts_labels, ct)
        assert report["warnings"] == []
        laterality = report["laterality"]
        assert laterality["ok"] is True
        assert [check["ok"] for check in laterality["checks"]] == [True, True]
        assert "right kidney" in laterality["checks"][0]["rule"] and "liver" in laterality["checks"][1]["rule"]
        assert all(entry["within"] for entry in report["volumes"].values())
    assert qa_report(ts_labels)["laterality"]["midline_from"] == "centre of the field of view"
    assert report["laterality"]["midline_from"] == "centroid of the body in the CT"
    assert abs(report["laterality"]["midline_x_mm"]) < 20  # the body is centred in this scan


def test_volumes_are_reported_against_the_typical_ranges(ts_labels):
    volumes = qa_report(ts_labels)["volumes"]
    assert list(volumes) == list(ORGAN_NAMES)
    assert volumes["liver"]["volume_ml"] == pytest.approx(41692 * 27 / 1000, abs=0.01)
    assert volumes["spleen"]["volume_ml"] == pytest.approx(9668 * 27 / 1000, abs=0.01)
    for name, entry in volumes.items():
        assert entry["typical_range_ml"] == list(TYPICAL_VOLUME_ML[name])


def test_the_summarys_measurements_are_the_volumes_judged(ts_labels):
    ct = read_image(SAMPLE_CT)
    measurements = organ_measurements(ts_labels, ct)
    report = qa_report(ts_labels, ct, measurements)
    assert report == qa_report(ts_labels, ct)  # the numbers the QA would count itself
    assert {name: entry["volume_ml"] for name, entry in report["volumes"].items()} == {
        name: entry["volume_ml"] for name, entry in measurements.items()
    }
    # Taken as given, not counted again: a liver measured at 3000 mL is judged at 3000 mL.
    large_liver = {**measurements, "liver": {**measurements["liver"], "volume_ml": 3000.0}}
    report = qa_report(ts_labels, ct, large_liver)
    assert report["volumes"]["liver"]["volume_ml"] == 3000.0 and report["volumes"]["liver"]["within"] is False
    (warning,) = report["warnings"]
    assert warning.startswith("The liver volume, 3000 mL, is outside the typical adult range of 800-2500 mL")


def test_a_spleen_mirrored_by_its_header_is_flagged_against_the_midline(msd_labels, test_data):
    for ct in (None, read_image(test_data / "msd_spleen_8" / "ct.nii.gz")):
        report = qa_report(msd_labels, ct)
        laterality = report["laterality"]
        assert laterality["ok"] is False
        (check,) = laterality["checks"]  # only the spleen is labelled: it is compared with the midline
        assert check["rule"] == "the spleen lies on the patient's left of the midline" and check["ok"] is False
        assert check["x_mm"]["spleen"] > check["x_mm"]["midline"] + 50
        (warning,) = laterality_warnings(report)
        assert warning.startswith("The spleen lies on the patient's right of the midline")
        assert {"No liver was found.", "No right kidney was found.", "No left kidney was found."} <= set(report["warnings"])


def mirrored_in_the_header(labels: Image) -> Image:
    """The same voxels with the world x axis negated: the anatomy mirrored left-right in world space."""
    return Image(labels.array, np.diag([-1.0, 1.0, 1.0, 1.0]) @ labels.affine)


def test_a_header_mirror_breaks_both_pair_rules(ts_labels):
    report = qa_report(mirrored_in_the_header(ts_labels))
    assert report["laterality"]["ok"] is False
    assert [check["ok"] for check in report["laterality"]["checks"]] == [False, False]
    warnings = laterality_warnings(report)
    assert len(warnings) == 2
    assert warnings[0].startswith("The right kidney lies on the patient's left of the left kidney")
    assert warnings[1].startswith("The liver lies on the patient's left of the spleen")


def test_swapped_kidney_labels_are_flagged_and_the_liver_still_passes(ts_labels):
    array = ts_labels.array.copy()
    array[ts_labels.array == RIGHT_KIDNEY] = LEFT_KIDNEY
    array[ts_labels.array == LEFT_KIDNEY] = RIGHT_KIDNEY
    report = qa_report(ts_labels.with_array(array))
    assert [check["ok"] for check in report["laterality"]["checks"]] == [False, True]
    (warning,) = report["warnings"]
    assert "right kidney lies on the patient's left of the left kidney" in warning


def test_a_lone_liver_on_the_patients_left_is_flagged(ts_labels):
    only_liver = np.where(ts_labels.array == LIVER, LIVER, 0).astype(np.uint8)
    assert qa_report(ts_labels.with_array(only_liver))["laterality"]["ok"] is True
    report = qa_report(mirrored_in_the_header(ts_labels.with_array(only_liver)))
    (check,) = report["laterality"]["checks"]
    assert check["rule"] == "the liver lies on the patient's right of the midline" and check["ok"] is False


def test_implausible_volumes_and_organs_cut_by_the_field_of_view_are_warned():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    array = np.zeros((120, 100, 80), np.uint8)
    array[60:110, 10:90, 10:70] = LIVER  # 50 x 80 x 60 voxels of 8 mm^3 = 1920 mL: typical
    array[5:30, 20:45, 0:25] = SPLEEN  # 25^3 voxels = 125 mL, touching the k = 0 edge: typical
    array[5:15, 60:70, 30:40] = RIGHT_KIDNEY  # 1000 voxels = 8 mL: too small
    report = qa_report(Image(array, affine))
    volumes = report["volumes"]
    assert volumes["liver"]["volume_ml"] == pytest.approx(1920.0) and volumes["liver"]["within"] is True
    assert volumes["spleen"]["touches_edge"] is True and volumes["liver"]["touches_edge"] is False
    assert volumes["right_kidney"]["within"] is False and volumes["left_kidney"]["volume_ml"] == 0.0
    assert "The right kidney volume, 8 mL, is outside the typical adult range of 90-300 mL." in report["warnings"]
    assert "No left kidney was found." in report["warnings"]

    array[array == SPLEEN] = 0
    array[5:55, 20:70, 0:40] = SPLEEN  # 100000 voxels = 800 mL, cut by the edge
    (spleen_warning,) = [w for w in qa_report(Image(array, affine))["warnings"] if w.startswith("The spleen")]
    assert "800 mL" in spleen_warning and "partly in the field of view" in spleen_warning


def test_the_report_is_plain_json(ts_labels, msd_labels):
    for labels in (ts_labels, msd_labels):
        report = qa_report(labels)
        assert json.loads(json.dumps(report, allow_nan=False)) == report
