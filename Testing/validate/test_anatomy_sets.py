"""Every anatomy map of the other sets in the shared data loads for synthetic CT: 6 TotalSegmentator,
29 BTCV (not redistributable, hence here) and 1 AMOS map (``../shared/data/ANATOMY_SOURCES.md``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from abdoseg_train.anatomy import discover_anatomy, load_anatomy
from abdoseg_train.structures import STRUCTURE_IDS
from AbdoSegLib.model.preprocessing import Preprocessing

SPEC = Preprocessing((3.0, 3.0, 3.0), (-200.0, 400.0))
SETS = {"anatomy_totalseg": ("TotalSegmentator v2 total", 6), "anatomy_btcv": ("BTCV", 29), "anatomy_amos": ("AMOS", 1)}
ORGANS = {"liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}  # JSON names -> AbdoSeg ids


@pytest.mark.parametrize("folder", SETS)
def test_every_map_loads_with_the_organs_its_json_says_are_present(data_dir, folder):
    table, count = SETS[folder]
    sources = discover_anatomy(data_dir / folder)
    assert len(sources) == count and {source.table.name for source in sources} == {table}
    for source in sources:
        case = load_anatomy(source, SPEC)
        info = json.loads(source.info.read_text())
        assert case.labelled == (1, 2, 3, 4)
        assert case.organ_labels == {ORGANS[name] for name in info["present"] if name in ORGANS}, source.name
        voxel_ml = float(np.prod(np.linalg.norm(case.affine[:3, :3], axis=0))) / 1000
        for name, volume_ml in info["organ_volumes_ml"].items():
            # Nearest neighbour onto 3 mm: within 3.5 % of the map's own volume (measured at most 3.5 %).
            assert np.sum(case.labels == ORGANS[name]) * voxel_ml == pytest.approx(volume_ml, rel=0.04), (source.name, name)
        if {2, 3} <= case.organ_labels:  # the patient's right is +x on the model grid (RAS)
            assert np.argwhere(case.labels == 2)[:, 0].mean() > np.argwhere(case.labels == 3)[:, 0].mean(), source.name
        body = case.structures != STRUCTURE_IDS["outside"]
        assert (case.structures == STRUCTURE_IDS["body_other"]).any() and body.mean() < 0.9, source.name  # air around the body
