"""Fixtures of ``make validate``: the project's shared data, which may not be redistributed.

The data folder is ``$ABDOSEG_DATA``, else ``../shared/data`` beside the checkout (its README.md gives
each case's source and licence). Without it the run stops before collecting anything, with one
sentence, rather than failing every test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

BESIDE_CHECKOUT = Path(__file__).resolve().parents[3] / "shared" / "data"
NEEDED = ("ircad_17", "anatomy", "anatomy_totalseg", "anatomy_btcv", "anatomy_amos")
"""3D-IRCADb-01: a held-out CT with its liver, and anatomy maps; anatomy maps of TotalSegmentator, BTCV and AMOS."""


def _data_folder() -> Path:
    return Path(os.environ["ABDOSEG_DATA"]) if os.environ.get("ABDOSEG_DATA") else BESIDE_CHECKOUT


def pytest_configure(config: pytest.Config) -> None:
    root = _data_folder()
    named = "the folder ABDOSEG_DATA names" if os.environ.get("ABDOSEG_DATA") else "../shared/data beside the checkout"
    missing = next((folder for folder in (root, *(root / name for name in NEEDED)) if not folder.is_dir()), None)
    if missing is not None:
        raise pytest.UsageError(f"make validate needs the project's shared data ({named}), and {missing} is missing: "
                                f"set ABDOSEG_DATA to the folder that holds {'/, '.join(NEEDED)}/ (see README.md).")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder (``$ABDOSEG_DATA`` or ``../shared/data``)."""
    return _data_folder()


@pytest.fixture(scope="session")
def anatomy_dir(data_dir: Path) -> Path:
    """17 anatomy maps of 3D-IRCADb-01 patients (``ircad_NN_anatomy*.nii.gz`` + JSON)."""
    return data_dir / "anatomy"
