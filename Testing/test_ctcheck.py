"""The CT check: real CT passes; what is not a CT in Hounsfield units is refused in one sentence."""

from __future__ import annotations

import re

import numpy as np
import pytest

from AbdoSegLib.analysis.ctcheck import check_ct
from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image

SOURCE = "/data/patients/case 7/ct.nii.gz"


def _refusal(image: Image, source: str = SOURCE) -> str:
    with pytest.raises(AbdoSegError) as caught:
        check_ct(image, source)
    message = str(caught.value)
    assert source in message, message
    assert "\n" not in message, message
    # one sentence: it ends with a full stop, and no other sentence ends inside it
    assert message.endswith("."), message
    assert not re.search(r"[.!?]\s+[A-Z]", message.replace(source, "SOURCE")), message
    return message


def test_real_ct_passes(ts_example_ct, ts_dicom_ct, test_data):
    check_ct(ts_example_ct, "ts_example")
    check_ct(ts_dicom_ct, "ts_dicom")
    check_ct(read_image(test_data / "msd_spleen_8" / "ct.nii.gz"), "msd_spleen_8")


def test_real_ct_as_float_passes(ts_example_ct):
    check_ct(ts_example_ct.with_array(ts_example_ct.array.astype(np.float32)), "ts_example as float32")


def test_mri_like_positive_intensities_are_refused(ts_example_ct):
    """The same anatomy with MRI-like values: all positive, 0..2000, no air below -300."""
    array = ts_example_ct.array.astype(np.float32)
    shifted = (array - array.min()) * (2000.0 / (array.max() - array.min()))
    assert shifted.min() == 0 and shifted.max() == pytest.approx(2000)
    message = _refusal(ts_example_ct.with_array(shifted))
    assert "CT" in message


def test_integer_mri_like_volume_is_refused(ts_example_ct):
    shifted = (ts_example_ct.array.astype(np.int32) + 1024).clip(0, 2000).astype(np.uint16)
    _refusal(ts_example_ct.with_array(shifted))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(ts_example_ct, bad):
    array = ts_example_ct.array.astype(np.float32)
    array[61, 50, 57] = bad  # one voxel, off the every-4th-voxel sample grid
    message = _refusal(ts_example_ct.with_array(array))
    assert "NaN" in message or "infinite" in message


def test_values_beyond_any_hounsfield_unit_are_refused(ts_example_ct):
    array = ts_example_ct.array.astype(np.float32)
    array[::4, ::4, ::4][10, 10, 10] = 1e6
    _refusal(ts_example_ct.with_array(array))

