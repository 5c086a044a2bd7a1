"""QA of a labelmap: organ volumes against typical adult ranges, organ extents against plausible sizes,
the network's confidence, and laterality in world space, on real cases (the bundled sample, Testing/Data)
and on synthetic mirrors and boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from AbdoSegLib.analysis.qa import LOW_CONFIDENCE, MAX_EXTENT_MM, TYPICAL_VOLUME_ML, qa_report
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


def _box_labels(organ: str, size: tuple[int, int, int], affine: np.ndarray) -> Image:
    """One organ as a box of ``size`` voxels with a 3-voxel margin of background."""
    array = np.zeros(tuple(n + 6 for n in size), np.uint8)
    array[3:-3, 3:-3, 3:-3] = organ_by_name(organ).label
    return Image(array, affine)


def _extent_warnings(report: dict) -> list[str]:
    return [w for w in report["warnings"] if " spans " in w]


TWO_MM = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.mark.parametrize(
    "organ, size, warning",
    [
        ("right_kidney", (20, 30, 85), "The right kidney spans 170 mm from head to foot, more than the 160 mm plausible for an adult right kidney"),
        ("right_kidney", (20, 30, 60), None),  # 12 cm long: a normal kidney
        ("left_kidney", (65, 20, 50), "The left kidney spans 130 mm from side to side, more than the 120 mm plausible for an adult left kidney"),
        ("spleen", (40, 40, 105), "The spleen spans 210 mm from head to foot, more than the 200 mm plausible for an adult spleen"),
        ("liver", (155, 80, 60), "The liver spans 310 mm from side to side, more than the 300 mm plausible for an adult liver"),
        ("liver", (140, 110, 145), None),  # 28 x 22 x 29 cm: large, within the bounds
    ],
)
def test_an_organ_spanning_beyond_its_plausible_size_is_warned(organ, size, warning):
    report = qa_report(_box_labels(organ, size, TWO_MM))
    entry = report["extents"][organ]
    assert entry["extent_mm"] == [2.0 * n for n in size]  # edge to edge: voxels x 2 mm
    assert entry["max_extent_mm"] == list(MAX_EXTENT_MM[organ]) and entry["within"] is (warning is None)
    if warning is None:
        assert _extent_warnings(report) == []
    else:
        assert _extent_warnings(report) == [f"{warning}; it may have taken in a neighbouring structure."]


def test_extents_are_measured_along_the_world_axes_not_the_array_axes():
    """The 17 cm kidney box stored with i running head to foot (i -> S, j -> R, k -> A)."""
    affine = np.array([[0, 2.0, 0, 0], [0, 0, 2.0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    report = qa_report(_box_labels("right_kidney", (85, 20, 30), affine))
    assert report["extents"]["right_kidney"]["extent_mm"] == [40.0, 60.0, 170.0]
    (warning,) = _extent_warnings(report)
    assert warning.startswith("The right kidney spans 170 mm from head to foot")


def test_low_confidence_and_the_reason_an_organ_is_missing_are_warned(ts_labels):
    ct = read_image(SAMPLE_CT)
    measurements = organ_measurements(ts_labels, ct)
    for name in ORGAN_NAMES:
        measurements[name].update(status="found", confidence=0.97, reason=None)
    assert qa_report(ts_labels, ct, measurements)["warnings"] == []
    measurements["liver"]["confidence"] = 0.91
    reason = "what the network drew (16 mL) has a confidence of 0.700, below the 0.90 required"
    measurements["spleen"] = {"volume_ml": 0.0, "voxels": 0, "mean_hu": None, "status": "not found", "confidence": None, "reason": reason}
    no_spleen = ts_labels.with_array(np.where(ts_labels.array == SPLEEN, 0, ts_labels.array).astype(np.uint8))
    report = qa_report(no_spleen, ct, measurements)
    assert report["low_confidence_below"] == LOW_CONFIDENCE
    assert report["warnings"] == [
        f"The network's confidence in the liver is 0.910, below {LOW_CONFIDENCE:.2f}: check that it is the liver.",
        f"No spleen was found: {reason}.",
    ]


@pytest.mark.parametrize("kept", [slice(62, None), slice(None, 60), slice(None, 40)])
def test_a_scan_of_one_side_of_the_body_judges_no_lone_organ_against_a_midline(kept):
    """Sample CT cut through the trunk (x[62:] keeps the patient's right, x[:60] and x[:40] the left): the body's
    centroid lies off its midline, so a lone kidney is not called flipped; pairs are still compared."""
    ct, reference = read_image(SAMPLE_CT), read_image(SAMPLE_REFERENCE)
    offset = np.eye(4)
    offset[0, 3] = range(ct.shape[0])[kept][0]
    cut_ct, cut_labels = (Image(np.ascontiguousarray(image.array[kept]), image.affine @ offset) for image in (ct, reference))
    whole = qa_report(reference, ct)["laterality"]
    cut = qa_report(cut_labels, cut_ct)
    assert whole["midline_x_mm"] is not None and whole["ok"]
    assert cut["laterality"]["midline_x_mm"] is None and cut["laterality"]["midline_from"].startswith("unknown: the scan cuts")
    assert all("midline" not in check["rule"] for check in cut["laterality"]["checks"])
    assert not [warning for warning in cut["warnings"] if "midline" in warning or "flipped" in warning]
    present = {name for name, centroid in cut["laterality"]["centroids_ras_mm"].items() if centroid is not None}
    assert ({"liver", "spleen"} <= present) == any("spleen" in check["rule"] for check in cut["laterality"]["checks"])
