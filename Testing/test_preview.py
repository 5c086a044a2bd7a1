"""The preview PNG: size, organ colours where the organs are, radiological orientation, 3D render (EGL)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image as PILImage

from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.organs import organ_by_name
from AbdoSegLib.resources import SAMPLE_CT, SAMPLE_REFERENCE
from AbdoSegLib.surfaces.preview import ALPHA, HU_WINDOW, PANEL, SIZE, render_preview

LIVER, SPLEEN = organ_by_name("liver"), organ_by_name("spleen")
HU = 40.0  # uniform synthetic CT: every organ pixel has one exact overlay colour
TILES = {"axial": (0, 0), "coronal": (PANEL, 0), "sagittal": (0, PANEL), "3d": (PANEL, PANEL)}


def overlay_colour(organ, hu: float = HU) -> np.ndarray:
    low, high = HU_WINDOW
    grey = np.clip((hu - low) / (high - low), 0, 1) * 255
    return np.round((1 - ALPHA) * grey + ALPHA * 255 * np.array(organ.color))


def tile(picture: np.ndarray, name: str) -> np.ndarray:
    x, y = TILES[name]
    return picture[y : y + PANEL, x : x + PANEL]


def pixels_of(panel: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the pixels of ``colour`` (within 1 per channel)."""
    return np.nonzero(np.all(np.abs(panel.astype(int) - colour) <= 1, axis=2))


@pytest.fixture(scope="module")
def phantom() -> tuple[Image, Image]:
    """Uniform CT (40 HU) of 40 x 60 x 30 voxels of 1.5 x 1 x 2.5 mm, RAS voxel order.

    Liver: a box at the patient's right (high i), anterior (high j) and superior (high k);
    spleen: at the left, posterior and inferior; their ranges overlap on every axis, so each
    slice through both shows both. The liver box is 30 mm x 30 mm in the axial plane.
    """
    affine = np.diag([1.5, 1.0, 2.5, 1.0])
    affine[:3, 3] = (-30.0, -20.0, 50.0)
    ct = np.full((40, 60, 30), HU, dtype=np.float32)
    labels = np.zeros(ct.shape, dtype=np.uint8)
    labels[18:38, 28:58, 12:28] = LIVER.label
    labels[4:22, 6:32, 3:16] = SPLEEN.label
    return Image(ct, affine), Image(labels, affine)


def flipped_lps_order(image: Image) -> Image:
    """The same physical image stored with i and j reversed (as a DICOM series in LPS order is)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [image.shape[0] - 1, image.shape[1] - 1]
    return Image(np.ascontiguousarray(image.array[::-1, ::-1]), image.affine @ flip)


def render(tmp_path, ct, labels, reference=None, name="preview.png") -> np.ndarray:
    path = render_preview(ct, labels, tmp_path / name, reference)
    assert path == tmp_path / name and path.is_file()
    with PILImage.open(path) as picture:
        assert picture.format == "PNG" and picture.size == SIZE
        return np.asarray(picture.convert("RGB"))


def test_slices_show_organ_colours_in_radiological_orientation(tmp_path, phantom):
    picture = render(tmp_path, *phantom)
    # (view, image axis along which liver < spleen (0 rows: liver higher; 1 columns: liver more left))
    expectations = {
        "axial": [(0, "anterior up"), (1, "patient's right on the left")],
        "coronal": [(0, "superior up"), (1, "patient's right on the left")],
        "sagittal": [(0, "superior up"), (1, "anterior on the left")],
    }
    for view, checks in expectations.items():
        liver = pixels_of(tile(picture, view), overlay_colour(LIVER))
        spleen = pixels_of(tile(picture, view), overlay_colour(SPLEEN))
        assert liver[0].size > 100 and spleen[0].size > 100, view
        for axis, meaning in checks:
            assert liver[axis].mean() < spleen[axis].mean(), f"{view}: {meaning}"


def test_slices_keep_millimetre_proportions(tmp_path, phantom):
    picture = render(tmp_path, *phantom)
    rows, columns = pixels_of(tile(picture, "axial"), overlay_colour(LIVER))
    height, width = np.ptp(rows) + 1, np.ptp(columns) + 1  # 30 mm x 30 mm, in 30 x 20 voxels
    assert abs(height - width) <= 2


def test_voxel_order_does_not_change_the_slices(tmp_path, phantom):
    ras = render(tmp_path, *phantom, name="ras.png")
    lps = render(tmp_path, *(flipped_lps_order(image) for image in phantom), name="lps.png")
    for view in ("axial", "coronal", "sagittal"):
        np.testing.assert_array_equal(tile(ras, view), tile(lps, view))


def test_3d_render_shows_the_surfaces_seen_from_the_front(tmp_path, phantom):
    panel = tile(render(tmp_path, *phantom), "3d").astype(float)
    red, green, blue = panel[..., 0], panel[..., 1], panel[..., 2]
    lit = red > 40
    liver_like = lit & (blue < 0.6 * red)  # liver colour: blue/red 0.46; spleen: 1.03
    spleen_like = lit & (blue > 0.85 * red) & (green < 0.9 * blue)
    assert liver_like.sum() > 1000 and spleen_like.sum() > 1000
    liver_rows, liver_columns = np.nonzero(liver_like)
    spleen_rows, spleen_columns = np.nonzero(spleen_like)
    assert liver_columns.mean() < spleen_columns.mean()  # the patient's right on the left
    assert liver_rows.mean() < spleen_rows.mean()  # superior up


def test_reference_is_drawn_as_outlines(tmp_path, phantom):
    ct, labels = phantom
    reference = labels.with_array(np.roll(labels.array, 2, axis=0))
    picture = render(tmp_path, ct, labels, reference)
    outline = np.round(255 * (0.5 + 0.5 * np.array(LIVER.color)))
    rows, _ = pixels_of(tile(picture, "axial"), outline)
    assert rows.size > 50
    without = render(tmp_path, ct, labels, name="without.png")
    assert pixels_of(tile(without, "axial"), outline)[0].size == 0


def test_sample_preview_shows_the_liver_on_the_patients_right(tmp_path):
    picture = render(tmp_path, read_image(SAMPLE_CT), read_image(SAMPLE_REFERENCE))
    axial = tile(picture, "axial").astype(float)
    # A liver pixel is the liver colour blended over a grey: undoing the blend leaves r = g = b.
    grey = (axial - ALPHA * 255 * np.array(LIVER.color)) / (1 - ALPHA)
    is_liver = np.all(np.abs(grey - grey.mean(axis=2, keepdims=True)) <= 1.5, axis=2) & np.all((grey > -1) & (grey < 256), axis=2)
    columns = np.nonzero(is_liver)[1]
    assert columns.size > 2000
    assert np.mean(columns < PANEL // 2) > 0.8


def test_without_an_opengl_driver_the_preview_fails_in_one_sentence_not_a_crash(tmp_path):
    """VTK crashes the process when it renders without an OpenGL context; the preview checks first.

    An empty EGL vendor list hides Mesa from libglvnd. Where VTK then finds another way to
    render (OSMesa, when installed) the picture is written; otherwise: one sentence, exit 1.
    """
    script = (
        "import sys\n"
        "from AbdoSegLib.errors import AbdoSegError\n"
        "from AbdoSegLib.io.image_files import read_image\n"
        "from AbdoSegLib.surfaces.preview import render_preview\n"
        "from AbdoSegLib.resources import SAMPLE_CT, SAMPLE_REFERENCE\n"
        "try:\n"
        "    render_preview(read_image(SAMPLE_CT), read_image(SAMPLE_REFERENCE), sys.argv[1])\n"
        "except AbdoSegError as error:\n"
        "    sys.exit(f'abdoseg: error: {error}')\n"
    )
    path = tmp_path / "preview.png"
    env = dict(os.environ, __EGL_VENDOR_LIBRARY_FILENAMES=str(tmp_path / "no-vendor.json"))
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env, timeout=300)
    if result.returncode == 0:
        assert path.is_file()
    else:
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert "libegl1 libgl1-mesa-dri" in result.stderr
        assert not path.exists()
