"""The fluid check of the QA on exactly-known volumes: an organ of known density in fat, with a partial-volume edge
and noise, with or without a ball of fluid of known volume in its label; and on the real sample, with a cyst of known
volume painted beside its spleen and drawn as spleen."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from abdoseg_train.inserted_cysts import cyst_beside, noise_sd, paint_cyst, replaceable_tissue
from AbdoSegLib.analysis import fluid
from AbdoSegLib.analysis.fluid import FLUID_MAX_HU, MIN_FLUID_ML, fluid_region, fluid_warning
from AbdoSegLib.analysis.qa import qa_report
from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.organs import organ_by_name
from AbdoSegLib.resources import SAMPLE_REFERENCE

FAT_HU, NOISE_HU = -100.0, 15.0
ORGAN_AXES_MM = np.array([50.0, 40.0, 60.0])  # semi-axes of an ellipsoid of 503 mL
GRIDS = {"3 mm": (3.0, 3.0, 3.0), "thin slices": (0.8, 0.8, 1.5)}


def _ball(spacing: np.ndarray, shape: tuple[int, ...], centre_mm: np.ndarray, axes_mm: np.ndarray) -> np.ndarray:
    """(shape) bool: the voxels whose centres lie inside an ellipsoid (world mm from the grid's corner voxel)."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g * s - c) / a) ** 2 for g, s, c, a in zip(grid, spacing, centre_mm, axes_mm)) <= 1.0


def _scan(spacing_mm: tuple[float, ...], organ_hu: float, cyst_radius_mm: float = 0.0, cyst_hu: float = 5.0,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(organ label, CT in HU, spacing, the cyst's exact volume in mL): an ellipsoid organ in fat, its edge blurred
    by 1 mm (partial volume), white noise of ``NOISE_HU``; with ``cyst_radius_mm``, a ball of fluid centred on the
    organ's lateral surface, whole in the label (half inside the organ, half beside it, drawn as organ)."""
    spacing = np.array(spacing_mm)
    shape = tuple(int(n) for n in np.ceil(170.0 / spacing))
    centre = np.array(shape) * spacing / 2
    organ = _ball(spacing, shape, centre, ORGAN_AXES_MM)
    hu = np.where(organ, organ_hu, FAT_HU)
    label, cyst_ml = organ, 0.0
    if cyst_radius_mm:
        cyst = _ball(spacing, shape, centre + np.array([ORGAN_AXES_MM[0], 0, 0]), np.full(3, cyst_radius_mm))
        hu, label = np.where(cyst, cyst_hu, hu), organ | cyst
        cyst_ml = cyst.sum() * np.prod(spacing) / 1000.0
    hu = ndimage.gaussian_filter(hu, 1.0 / spacing) + np.random.default_rng(seed).normal(0, NOISE_HU, shape)
    return label, hu.astype(np.float32), spacing, cyst_ml


@pytest.mark.parametrize("grid", GRIDS)
def test_a_cyst_drawn_as_organ_is_found_with_its_volume_and_density(grid):
    label, ct, spacing, cyst_ml = _scan(GRIDS[grid], organ_hu=45.0, cyst_radius_mm=25.0)
    region = fluid_region(label, ct, spacing)
    assert region is not None
    assert region["volume_ml"] == pytest.approx(cyst_ml, rel=0.3)  # blocks of 3 mm and the opening of one block
    assert region["mean_hu"] < FLUID_MAX_HU
    assert region["organ_hu"] == pytest.approx(45.0, abs=5.0)


@pytest.mark.parametrize("grid", GRIDS)
def test_an_organ_without_fluid_in_fat_has_none_despite_its_partial_volume_rim(grid):
    label, ct, spacing, _ = _scan(GRIDS[grid], organ_hu=35.0)
    assert fluid_region(label, ct, spacing) is None


def test_an_organ_as_dense_as_fluid_is_not_a_fluid_region_of_itself():
    label, ct, spacing, _ = _scan(GRIDS["3 mm"], organ_hu=10.0)  # a fatty liver, an unenhanced kidney in a noisy scan
    assert fluid_region(label, ct, spacing) is None


def test_a_hypodense_solid_lesion_is_not_fluid():
    label, ct, spacing, _ = _scan(GRIDS["3 mm"], organ_hu=120.0, cyst_radius_mm=25.0, cyst_hu=60.0)  # a tumour in portal-venous CT
    assert fluid_region(label, ct, spacing) is None


def test_a_cyst_smaller_than_the_threshold_is_found_but_not_reported(monkeypatch):
    label, ct, spacing, cyst_ml = _scan(GRIDS["3 mm"], organ_hu=45.0, cyst_radius_mm=15.0)
    assert cyst_ml < MIN_FLUID_ML  # 14 mL
    assert fluid_region(label, ct, spacing) is None
    monkeypatch.setattr(fluid, "MIN_FLUID_ML", 5.0)
    assert fluid_region(label, ct, spacing)["volume_ml"] == pytest.approx(cyst_ml, rel=0.3)


def test_the_qa_warns_about_the_organ_that_holds_the_fluid():
    label, ct, spacing, _ = _scan(GRIDS["3 mm"], organ_hu=45.0, cyst_radius_mm=25.0)
    affine = np.diag([*spacing, 1.0])
    labels = Image(np.where(label, 4, 0).astype(np.uint8), affine)  # the spleen
    report = qa_report(labels, Image(ct, affine))
    region = report["fluid_regions"]["spleen"]
    assert [w for w in report["warnings"] if "fluid" in w] == [fluid_warning("spleen", region)]
    assert report["fluid_regions"]["liver"] is None
    assert qa_report(labels)["fluid_regions"]["spleen"] is None  # no CT on the grid: nothing judged
    assert f"a {region['volume_ml']:.0f} mL region of fluid density" in fluid_warning("spleen", region)


def test_a_cyst_beside_the_real_spleen_drawn_as_spleen_is_warned_and_the_real_organs_are_not(ts_example_ct):
    """The sample is unenhanced: its spleen measures 35 HU, its kidneys 14-21 HU, near fluid's 8."""
    reference = read_image(SAMPLE_REFERENCE)
    spleen_id = organ_by_name("spleen").label
    cyst = cyst_beside(reference.array == spleen_id, replaceable_tissue(ts_example_ct, reference.array), ts_example_ct.affine,
                       (0.0, 1.0, -1.0), 100.0)  # in front of it and below
    cyst_ml = cyst.sum() * ts_example_ct.voxel_volume_ml
    with_cyst = paint_cyst(ts_example_ct, cyst, noise_sd(ts_example_ct), np.random.default_rng(0))
    drawn = reference.with_array(np.where(cyst, spleen_id, reference.array).astype(reference.array.dtype))
    report = qa_report(drawn, with_cyst)
    assert report["fluid_regions"]["spleen"]["volume_ml"] == pytest.approx(cyst_ml, rel=0.3)
    assert [w for w in report["warnings"] if "fluid" in w] == [fluid_warning("spleen", report["fluid_regions"]["spleen"])]
    assert all(region is None for region in qa_report(reference, ts_example_ct)["fluid_regions"].values())
