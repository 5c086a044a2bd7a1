"""A header that mirrors the patient left-right is warned about: the network finds the liver with more
confidence in the scan mirrored (``inference/mirror_check.py``). On the sample CT and msd_spleen_8 (whose
stored header mirrors the patient), each also with its header mirrored in x, and on exactly-known decisions."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from AbdoSegLib.analysis.qa import qa_report
from AbdoSegLib.cli import main
from AbdoSegLib.image import Image
from AbdoSegLib.inference.mirror_check import (
    CONVINCING,
    CONVINCING_LIVER,
    LIVER_TO_SPLEEN,
    MIN_JUDGED_LIVER_ML,
    SIDES_NOT_LEARNED,
    MirrorCheck,
    check_mirror,
    needs_mirrored_pass,
    sides_learned,
    unmirror,
)
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.inference.presence import FOUND, NOT_FOUND, OrganPresence
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.organs import NUM_CLASSES, organ_by_name
from AbdoSegLib.outputs import SUMMARY_FILE
from AbdoSegLib.resources import SAMPLE_CT, SAMPLE_REFERENCE
from conftest import crop

WARNING_START = "The image's header may be mirrored left-right"
RIGHT_KIDNEY, LEFT_KIDNEY = organ_by_name("right_kidney").label, organ_by_name("left_kidney").label


def mirrored_in_x(image: Image) -> Image:
    """The same array with the world x axis negated (the affine's first row, origin included): the body
    mirrored left-right in world space, as a header mirrored in x makes it."""
    return Image(image.array, np.diag([-1.0, 1.0, 1.0, 1.0]) @ image.affine)


def _presence(status: str, confidence: float | None, volume_ml: float = 1000.0) -> OrganPresence:
    return OrganPresence(status, confidence, volume_ml, False, None if status == FOUND else "a reason")


# --- the rule on exactly-known decisions ----------------------------------------------


@pytest.mark.parametrize(("as_given", "mirrored", "warned"), [
    (_presence(FOUND, 0.902), _presence(FOUND, 0.970), True),
    (_presence(NOT_FOUND, 0.880), _presence(FOUND, 0.973), True),  # no liver as given, one mirrored
    (_presence(NOT_FOUND, None, 0.0), _presence(FOUND, 0.95), True),  # nothing drawn as given
    (_presence(FOUND, 0.970), _presence(FOUND, 0.902), False),
    (_presence(FOUND, 0.95), _presence(FOUND, 0.95), False),  # as confident: no reason to doubt the header
    (_presence(NOT_FOUND, 0.746), _presence(NOT_FOUND, 0.776), False),  # no liver either way (a pelvis)
    (_presence(FOUND, 0.95), None, False),  # the mirrored pass did not run
    (_presence(NOT_FOUND, 0.808, 40.0), _presence(FOUND, 0.903, 31.0), False),  # a fragment: too little to judge by
    (_presence(NOT_FOUND, 0.808, 40.0), _presence(FOUND, 0.903, MIN_JUDGED_LIVER_ML), True),
])
def test_the_header_is_doubted_only_when_the_liver_is_found_more_confidently_mirrored(as_given, mirrored, warned):
    check = MirrorCheck(as_given, mirrored)
    assert check.header_may_be_mirrored is warned
    summary = check.summary()
    assert summary["header_may_be_mirrored"] is warned and summary["ran"] is (mirrored is not None)
    assert summary["liver_confidence"]["as_given"] == (None if as_given.confidence is None else round(as_given.confidence, 3))


def test_the_mirrored_pass_is_skipped_only_for_a_confident_liver_larger_than_twice_the_spleen():
    def presence(liver: OrganPresence, spleen: OrganPresence) -> dict[str, OrganPresence]:
        return {"liver": liver, "spleen": spleen}

    spleen = _presence(FOUND, 0.97, 200.0)
    assert not needs_mirrored_pass(presence(_presence(FOUND, CONVINCING_LIVER, 1500.0), spleen))
    assert needs_mirrored_pass(presence(_presence(FOUND, CONVINCING_LIVER - 0.001, 1500.0), spleen))
    assert needs_mirrored_pass(presence(_presence(NOT_FOUND, 0.97, 100.0), spleen))
    # With the header mirrored, ts_dicom's "liver" (0.976, 257 mL) lay on the spleen, smaller than its "spleen" (333 mL).
    assert needs_mirrored_pass(presence(_presence(FOUND, 0.976, 257.0), _presence(FOUND, 0.908, 333.0)))
    assert needs_mirrored_pass(presence(_presence(FOUND, 0.99, LIVER_TO_SPLEEN * 200.0), spleen))
    assert not needs_mirrored_pass(presence(_presence(FOUND, 0.97, 400.0), _presence(NOT_FOUND, 0.8, 300.0)))


def test_unmirror_flips_x_back_and_exchanges_the_kidney_channels():
    probabilities = torch.rand((NUM_CLASSES, 4, 3, 2), generator=torch.Generator().manual_seed(0))
    back = unmirror(probabilities)
    for channel in range(NUM_CLASSES):
        source = {RIGHT_KIDNEY: LEFT_KIDNEY, LEFT_KIDNEY: RIGHT_KIDNEY}.get(channel, channel)
        torch.testing.assert_close(back[channel], probabilities[source].flip(0))
    torch.testing.assert_close(unmirror(back), probabilities)


def test_check_mirror_runs_the_network_on_the_volume_mirrored_along_x():
    volume = torch.arange(24, dtype=torch.float32).reshape(4, 3, 2)
    seen = []

    def infer(mirrored: torch.Tensor) -> torch.Tensor:
        seen.append(mirrored)
        return torch.zeros((NUM_CLASSES, *mirrored.shape))

    liver = _presence(NOT_FOUND, 0.8, 10.0)
    presence = {"liver": liver, "spleen": _presence(FOUND, 0.97, 200.0)}
    check = check_mirror(presence, volume, infer, lambda probabilities: {"liver": _presence(FOUND, 0.97)}, learned_sides=True)
    (mirrored,) = seen
    torch.testing.assert_close(mirrored, volume.flip(0))
    assert check.as_given is liver and check.header_may_be_mirrored and check.skipped is None


def test_a_network_trained_with_left_right_flips_is_not_asked(tiny_model_bundle, default_model_bundle):
    assert sides_learned(default_model_bundle.metadata)  # trained with flip_probability 0 since abdoseg-vnet-0.7
    assert not sides_learned(tiny_model_bundle.metadata)  # records no flip_probability
    assert not sides_learned({"training": {"flip_probability": 0.5}})
    presence = {"liver": _presence(NOT_FOUND, 0.8, 10.0), "spleen": _presence(FOUND, 0.97, 200.0)}
    check = check_mirror(presence, torch.zeros((4, 3, 2)), pytest.fail, pytest.fail, learned_sides=False)
    assert check.mirrored is None and check.skipped == SIDES_NOT_LEARNED and not check.header_may_be_mirrored


def test_the_qa_puts_the_mirror_warning_first_and_records_the_check():
    labels = read_image(SAMPLE_REFERENCE)
    check = MirrorCheck(_presence(FOUND, 0.902), _presence(FOUND, 0.970)).summary()
    report = qa_report(labels, mirror=check)
    assert report["mirror_check"] == check
    assert report["warnings"][0] == (
        f"{WARNING_START}: the network finds the liver with more confidence in the scan mirrored left-right (0.970) than in the "
        "scan as given (0.902), so the labels may lie on the wrong organs; check the image orientation before trusting left and right.")
    nothing_drawn = MirrorCheck(_presence(NOT_FOUND, None, 0.0), _presence(FOUND, 0.95)).summary()
    assert "than in the scan as given (no liver drawn)" in qa_report(labels, mirror=nothing_drawn)["warnings"][0]
    quiet = MirrorCheck(_presence(FOUND, 0.97), None).summary()
    assert qa_report(labels, mirror=quiet)["warnings"] == [] and qa_report(labels)["mirror_check"] is None


# --- the default model on real CT ---------------------------------------------------------


@pytest.fixture(scope="module")
def sform_mirrored_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample CT as a NIfTI whose sform (qform unset, as nibabel writes it) mirrors x: the voxels as
    stored, the affine's x row and origin negated. The body lies mirrored in world space."""
    source = nib.load(str(SAMPLE_CT))
    path = tmp_path_factory.mktemp("mirrored") / "sform_mirrored_x.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj), np.diag([-1.0, 1.0, 1.0, 1.0]) @ source.affine), str(path))
    return path


def test_a_sform_mirrored_in_x_is_warned_about_in_the_summary_and_on_stdout(sform_mirrored_sample, tmp_path, capsys):
    """Mirrored, the sample's "liver" is found at 0.902 (341 mL) and its "spleen", both on parts of the liver, and at
    0.970 in the scan mirrored back; laterality alone passes (the network drew "liver" right of "spleen")."""
    out = tmp_path / "out"
    assert main(["segment", str(sform_mirrored_sample), "-o", str(out), "--progress", "none", "--device", "cpu"]) == 0
    qa = json.loads((out / SUMMARY_FILE).read_text())["qa"]
    check = qa["mirror_check"]
    assert check["ran"] and check["header_may_be_mirrored"]
    assert check["liver_confidence"]["mirrored"] > check["liver_confidence"]["as_given"]
    assert qa["laterality"]["ok"] is True  # what the QA warned about before
    assert qa["warnings"][0].startswith(WARNING_START)
    assert qa["warnings"][0].endswith("check the image orientation before trusting left and right.")
    printed = capsys.readouterr().out
    assert f"QA warning: {qa['warnings'][0]}" in printed.splitlines()


def test_the_sample_as_stored_is_not_doubted_and_needs_no_second_pass(ts_example_ct, default_model_bundle):
    prediction = segment(ts_example_ct, default_model_bundle, device="cpu")
    assert prediction.mirror.mirrored is None and prediction.mirror.skipped == CONVINCING
    assert not prediction.mirror.header_may_be_mirrored
    assert "mirror_check" not in prediction.timings_s


def test_a_slab_with_a_doubtful_liver_is_warned_about_only_when_its_header_is_mirrored(ts_example_ct, default_model_bundle):
    """The sample's slices 30-89 (the kidneys, the liver's lower tip): the liver is found at 0.950, below the
    convincing 0.96, so the mirrored pass runs either way; measured 0.950 as stored and 0.898 mirrored."""
    slab = crop(ts_example_ct, (slice(None), slice(None), slice(30, 90)))
    as_stored = segment(slab, default_model_bundle, device="cpu").mirror
    assert as_stored.mirrored is not None and not as_stored.header_may_be_mirrored
    mirrored = segment(mirrored_in_x(slab), default_model_bundle, device="cpu").mirror
    assert mirrored.mirrored is not None and mirrored.header_may_be_mirrored


def test_msd_spleen_8_whose_stored_header_mirrors_the_patient_is_warned_about(test_data, default_model_bundle):
    """Its liver lies on the patient's left as stored: found at 0.913 as given, 0.932 mirrored; with the header
    corrected (mirrored in x) the two swap and no warning is given."""
    ct = read_image(test_data / "msd_spleen_8" / "ct.nii.gz")
    assert segment(ct, default_model_bundle, device="cpu").mirror.header_may_be_mirrored
    assert not segment(mirrored_in_x(ct), default_model_bundle, device="cpu").mirror.header_may_be_mirrored
