"""A rehearsal of the Slicer module's user path without the application.

AbdoSeg/AbdoSeg.py is imported as Slicer imports it, on ``slicer-core``'s real MRML classes and ``slicer.util``,
with thin stand-ins for the rest of the application (Testing/slicer_standins.py: ``qt.QTimer``, ``slicer.app``,
``slicer.i18n``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``). ``PythonSlicer`` is a
stand-in launcher that runs this Python as its child. The module's own self-test (``AbdoSegTest``) drives the
logic as the widget does: Apply writes the volume, starts ``PythonSlicer -m AbdoSegLib.cli segment``, and the
QTimer polls it from the application's event loop until the result is imported into the scene; then the
comparison with the bundled reference and the STL export. Around it: the panel's Apply/Cancel button on stand-in
widgets, a cancelled run, runs that cannot start, a model path from another computer, and the self-test as ctest
runs it on Slicer's Python as Slicer ships it (no PyTorch, no pip packages, no PythonSlicer).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import unittest
from pathlib import Path
from types import SimpleNamespace

import pytest
import slicer

import slicer_standins
from AbdoSegLib import scene
from AbdoSegLib.resources import DEFAULT_BUNDLE

ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = ROOT / "AbdoSeg" / "AbdoSeg.py"
UI_FILE = ROOT / "AbdoSeg" / "Resources" / "UI" / "AbdoSeg.ui"
SEGMENTATION = "vtkMRMLSegmentationNode"

SLICER_SHIPS = ("numpy", "scipy", "vtk", "simpleitk", "pillow", "packaging", "pyparsing", "requests", "certifi", "idna",
                "charset-normalizer", "urllib3")
"""The Python distributions in Slicer 5.10's own Python (SuperBuild/External_python-*.cmake) that this venv has too."""


@pytest.fixture
def abdoseg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """AbdoSeg.py imported with the stand-ins, a fresh MRML scene as ``slicer.mrmlScene``, the PythonSlicer stand-in on the PATH."""
    for name, module in slicer_standins.STANDIN_MODULES.items():
        monkeypatch.setitem(sys.modules, name, module)
    temporary = tmp_path / "slicer-temp"
    temporary.mkdir()
    monkeypatch.setattr(slicer, "app", slicer_standins.Application(temporary), raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    scene.register_converter_rules()  # as the Segmentations module does when Slicer starts
    launcher_folder = tmp_path / "bin"
    launcher_folder.mkdir()
    slicer_standins.python_slicer(launcher_folder)
    monkeypatch.setenv("PATH", f"{launcher_folder}{os.pathsep}{os.environ['PATH']}")
    spec = importlib.util.spec_from_file_location("AbdoSeg", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_self_test(module, name: str) -> None:
    """One test of AbdoSeg.py's AbdoSegTest, as unittest runs it; a skip fails here (this environment has everything)."""
    case = module.AbdoSegTest(name)
    case.setUp()
    try:
        getattr(case, name)()
    except unittest.SkipTest as skipped:
        pytest.fail(f"AbdoSegTest.{name} was skipped: {skipped}")


def sample_volume(module):
    """The sample CT in ``slicer.mrmlScene``, read as the self-test reads it."""
    return module.AbdoSegTest()._loadSample()[0]


def leftovers() -> dict[str, list]:
    """What a run left behind: segmentation nodes in the scene, folders in Slicer's temporary folder."""
    nodes = [slicer.mrmlScene.GetNthNodeByClass(i, SEGMENTATION).GetName() for i in range(slicer.mrmlScene.GetNumberOfNodesByClass(SEGMENTATION))]
    return {"segmentations": nodes, "temporary": sorted(path.name for path in Path(slicer.app.temporaryPath).iterdir())}


# The user's path -----------------------------------------------------------------------------------


def test_apply_segments_the_sample_like_its_reference_and_exports_stl_inside_the_volume(abdoseg):
    run_self_test(abdoseg, "test_AbdoSegSample")  # four named, coded segments with closed surfaces; Dice > 0.8 per organ; STL
    assert leftovers() == {"segmentations": ["AbdoSegSampleCT organs", "AbdoSeg reference"], "temporary": []}


def test_the_comparison_table_of_two_equal_segmentations(abdoseg):
    run_self_test(abdoseg, "test_AbdoSegCompare")


def test_cancel_ends_the_process_tree_and_removes_the_segmentation_made_for_the_run(abdoseg):
    run_self_test(abdoseg, "test_AbdoSegCancel")
    assert leftovers() == {"segmentations": [], "temporary": []}


# The Apply button ----------------------------------------------------------------------------------


@pytest.fixture
def panel(abdoseg):
    """The module panel on stand-in widgets (its Qt setup() is not rehearsed), parameters at their defaults, the sample as input.

    ``setupPythonRequirements`` is recorded instead of run: this environment has every package, and nothing is installed.
    """
    widget = abdoseg.AbdoSegWidget()
    widget.ui = slicer_standins.ui_widgets(UI_FILE)
    widget.ui.progressBar.hide()
    widget.logic = abdoseg.AbdoSegLogic()
    widget.requirementChecks = []
    widget.logic.setupPythonRequirements = lambda askConfirmation: widget.requirementChecks.append(askConfirmation)
    defaults = abdoseg.AbdoSegParameterNode  # the stand-in wrapper leaves the class as written: its attributes are the defaults
    widget._parameterNode = SimpleNamespace(**{name: getattr(defaults, name, None) for name in defaults.__annotations__})
    widget._parameterNode.inputVolume = sample_volume(abdoseg)
    return widget


def button(panel) -> tuple[str, bool]:
    return panel.ui.applyButton.text, panel.ui.applyButton.enabled


def test_apply_turns_into_cancel_and_a_cancelled_run_leaves_no_segmentation(abdoseg, panel):
    panel.onApplyButton()
    assert panel.requirementChecks == [True]
    assert button(panel) == ("Cancel", True) and panel.ui.progressBar.visible and panel.ui.statusLabel.text == "Starting..."
    assert panel._parameterNode.outputSegmentation is panel.logic.segmentationNode
    assert leftovers()["segmentations"] == ["AbdoSegSampleCT organs"]
    panel.onApplyButton()  # the same button, now Cancel: returns at once
    assert panel.ui.statusLabel.text == "Cancelling..."
    abdoseg.AbdoSegTest._processEventsUntil(lambda: not panel.logic.isRunning(), timeoutSeconds=60)
    assert button(panel) == ("Apply", True) and not panel.ui.progressBar.visible and panel.ui.statusLabel.text == "Cancelled."
    assert leftovers() == {"segmentations": [], "temporary": []}


def test_a_finished_run_shows_each_organs_volume_and_confidence(abdoseg, panel):
    panel.onApplyButton()
    abdoseg.AbdoSegTest._processEventsUntil(lambda: not panel.logic.isRunning(), timeoutSeconds=300)
    assert button(panel) == ("Apply", True) and panel.ui.statusLabel.text.startswith("Done in")
    shown = panel.ui.resultsLabel.text
    for organ in abdoseg.ORGANS:
        assert re.search(rf"<td>{organ.title}</td><td align='right'>\d+\.\d mL</td><td>&nbsp;confidence 0\.9\d</td>", shown), organ.title


def test_apply_without_pythonslicer_says_so_before_installing_and_leaves_apply_ready(panel, tmp_path):
    (tmp_path / "bin" / "PythonSlicer").unlink()
    panel.ui.applyButton.text = "Cancel"  # whatever the button showed before
    with pytest.raises(RuntimeError, match="^PythonSlicer, Slicer's Python interpreter, is not on the PATH"):
        panel.onApplyButton()  # in Slicer, tryWithErrorDisplay shows it first
    assert panel.requirementChecks == []
    assert button(panel) == ("Apply", True) and not panel.ui.progressBar.visible and panel.ui.statusLabel.text == ""
    assert leftovers() == {"segmentations": [], "temporary": []}


def test_apply_with_a_launcher_that_cannot_start_reports_one_failure_and_leaves_apply_ready(panel, tmp_path, caplog):
    launcher = tmp_path / "bin" / "PythonSlicer"
    launcher.write_text("#!/nonexistent/interpreter\n")
    panel.onApplyButton()
    assert [record.getMessage() for record in caplog.records if record.levelname == "ERROR"] == [
        f"The segmentation failed: {launcher} could not be started: No such file or directory."
    ]
    assert button(panel) == ("Apply", True) and not panel.ui.progressBar.visible and panel.ui.statusLabel.text == "Failed."
    assert panel._parameterNode.outputSegmentation is None
    assert leftovers() == {"segmentations": [], "temporary": []}


# Runs that cannot start ---------------------------------------------------------------------------


def test_without_pythonslicer_apply_says_so_before_adding_anything(abdoseg, tmp_path):
    (tmp_path / "bin" / "PythonSlicer").unlink()
    logic, results = abdoseg.AbdoSegLogic(), []
    volume = sample_volume(abdoseg)
    with pytest.raises(RuntimeError) as refused:
        logic.checkInputs(volume)  # the widget's first step, before installing packages
    with pytest.raises(RuntimeError) as refused_again:
        logic.startSegmentation(volume, completedCallback=results.append)
    message = str(refused.value)
    assert message == str(refused_again.value)
    assert message.startswith("PythonSlicer, Slicer's Python interpreter, is not on the PATH") and message.count(".") == 1
    assert not logic.isRunning() and results == []
    assert leftovers() == {"segmentations": [], "temporary": []}


def test_a_launcher_that_cannot_start_is_one_failed_run_and_the_next_apply_can_start(abdoseg, tmp_path):
    launcher = tmp_path / "bin" / "PythonSlicer"
    launcher.write_text("#!/nonexistent/interpreter\n")  # found on the PATH, but the system cannot run it
    logic, results = abdoseg.AbdoSegLogic(), []
    process = logic.startSegmentation(sample_volume(abdoseg), completedCallback=results.append)
    assert [result.status for result in results] == ["failed"]  # reported once, at once
    assert results[0].message == f"{launcher} could not be started: No such file or directory."
    assert not logic.isRunning() and not process.running and process.proc is None
    assert leftovers() == {"segmentations": [], "temporary": []}
    slicer_standins.python_slicer(launcher.parent)
    assert logic.checkInputs(sample_volume(abdoseg)) == (DEFAULT_BUNDLE, str(launcher))  # not "already running"


# The model ---------------------------------------------------------------------------------------------


def test_the_bundled_model_is_found_at_run_time_and_a_chosen_file_is_kept_as_given(abdoseg, tmp_path):
    logic = abdoseg.AbdoSegLogic()
    assert logic.modelFile(None) == DEFAULT_BUNDLE
    chosen = tmp_path / "my model.safetensors"
    chosen.write_bytes(b"not read here")
    assert logic.modelFile(str(chosen)) == chosen


def test_a_model_path_from_another_computer_is_named_with_the_bundled_model_suggested(abdoseg):
    elsewhere = Path("/home/someone-else/SlicerExtensions/AbdoSeg/Resources/Models/abdoseg-vnet.safetensors")
    logic = abdoseg.AbdoSegLogic()
    with pytest.raises(ValueError) as refused:
        logic.startSegmentation(sample_volume(abdoseg), modelPath=elsewhere)
    message = str(refused.value)
    assert message.startswith(f"The model file {elsewhere} does not exist") and 'tick "Bundled model" under Advanced' in message
    assert message.count(". ") == 0 and message.endswith(".")
    assert leftovers() == {"segmentations": [], "temporary": []}


# The self-test on the extension build machines ------------------------------------------------------------


def slicer_python_path(folder: Path) -> Path:
    """A folder with only the packages that Slicer's own Python ships (and slicer-core standing for Slicer itself)."""
    folder.mkdir()
    for name in (*SLICER_SHIPS, "slicer-core"):
        distribution = importlib.metadata.distribution(name)
        for top in {file.parts[0] for file in distribution.files if file.parts[0] not in ("..", "__pycache__") and not file.parts[0].endswith(".pth")}:
            if not (folder / top).exists():
                (folder / top).symlink_to(distribution.locate_file(top))
    return folder


CTEST = """
import json, sys, unittest
import slicer, slicer_standins
sys.modules.update(slicer_standins.STANDIN_MODULES)
slicer.app = slicer_standins.Application(sys.argv[1])
slicer.mrmlScene = slicer.vtkMRMLScene()
from AbdoSegLib import scene
scene.register_converter_rules()
# What slicer.testing.runUnitTest does for slicer_add_python_unittest(SCRIPT AbdoSeg.py):
result = unittest.TextTestRunner(verbosity=2).run(unittest.TestLoader().loadTestsFromName("AbdoSeg"))
print(json.dumps({"run": result.testsRun, "passed": result.wasSuccessful(), "skipped": {test.id(): why for test, why in result.skipped}}))
"""


def test_the_ctest_passes_on_slicers_own_python_without_network_or_torch(tmp_path):
    site = slicer_python_path(tmp_path / "slicer-python")
    temporary = tmp_path / "slicer-temp"
    temporary.mkdir()
    python_path = os.pathsep.join(str(path) for path in (site, ROOT / "AbdoSeg", ROOT / "Testing"))
    completed = subprocess.run([sys.executable, "-S", "-c", CTEST, str(temporary)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, PYTHONPATH=python_path))
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["passed"] and summary["run"] == 4, output
    assert "test_AbdoSegSceneLogic (AbdoSeg.AbdoSegTest.test_AbdoSegSceneLogic)" in output and "Scene logic test passed" in output
    skipped = summary["skipped"]
    assert sorted(skipped) == [f"AbdoSeg.AbdoSegTest.test_AbdoSeg{name}" for name in ("Cancel", "Compare", "Sample")], output
    assert skipped["AbdoSeg.AbdoSegTest.test_AbdoSegCompare"] == "missing here for comparing: the Python package slicerio; a self-test installs nothing"
    for name in ("Cancel", "Sample"):
        reason = skipped[f"AbdoSeg.AbdoSegTest.test_AbdoSeg{name}"]
        assert reason.startswith("missing here for segmenting: torch, ") and "nibabel" in reason and "PythonSlicer;" in reason, reason
        assert "a self-test installs nothing" in reason
    assert list(temporary.iterdir()) == []
