"""The Slicer module's pip requirements resolved by pip against an installed torch 2.4 (needs PyPI).

AbdoSeg.py (``setupPythonRequirements``) installs the missing lines of AbdoSeg/Resources/requirements.txt
with a constraints file that pins torch to its installed version. Here pip resolves the whole file
the same way, without installing anything (``--dry-run``), for an empty virtual environment whose
only distribution is a torch 2.4.0 stand-in: its metadata alone, so that no PyTorch is downloaded.
This needs PyPI, so it runs in ``make validate`` rather than ``make test``; Testing/test_extension_files.py
checks offline that the requirements do not reach torch through the installed distributions.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REQUIREMENTS = Path(__file__).resolve().parents[2] / "AbdoSeg" / "Resources" / "requirements.txt"


def environment_with_torch_stand_in(folder: Path, version: str) -> Path:
    """A virtual environment (without pip) holding only torch ``version``'s metadata; returns its python."""
    venv.create(folder, with_pip=False)
    python = folder / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    info = site / f"torch-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")
    return python


def test_the_module_requirements_leave_an_installed_torch_2_4_at_2_4(tmp_path):
    python = environment_with_torch_stand_in(tmp_path / "env", "2.4.0")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch==2.4.0\n")  # what AbdoSeg.py writes for an installed torch 2.4.0
    report = tmp_path / "report.json"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--quiet", "--only-binary=:all:",
         "--report", str(report), "-r", str(REQUIREMENTS), "-c", str(constraints)],
        capture_output=True, text=True,
    )
    assert pip.returncode == 0, pip.stderr
    installs = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in json.loads(report.read_text())["install"]}
    required = {canonicalize_name(Requirement(line.split("#")[0]).name) for line in REQUIREMENTS.read_text().splitlines() if line.split("#")[0].strip()}
    assert required <= set(installs)  # pip resolved every requirement (none was installed)
    assert "torch" not in installs, f"pip would replace torch 2.4.0 by {installs.get('torch')}"
