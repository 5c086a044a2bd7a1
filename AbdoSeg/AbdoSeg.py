"""AbdoSeg: segment the liver, kidneys and spleen in abdominal CT (3D Slicer module; layer 3 of DESIGN.md).

This file is the thin Slicer part: module metadata, sample data, the parameter node, the
widget, and a logic that runs the engine's command line (``abdoseg segment``) in a separate
process through ``AbdoSegLib.process`` (the protocol, tested without Slicer; here a QTimer polls it),
so that Slicer stays responsive, then hands the results to ``AbdoSegLib.scene`` (layer 2), which
builds the segmentation node, its surfaces, the exports and the metrics table.

Heavy packages (torch, nibabel, scipy, psutil, ...) are never imported here at module level:
Slicer's Python gets them on first use (``AbdoSegLogic.setupPythonRequirements``, which installs the
pip requirements listed in ``Resources/requirements.txt``). This file never imports torch: only the command's process needs it.

Without the application, ``Testing/test_slicer_rehearsal.py`` imports this file on slicer-core with stand-ins for
``qt``, ``slicer.app`` and the rest (``Testing/slicer_standins.py``: anything else used fails there), clicks Apply
and Cancel on stand-in widgets and runs the self-test: a new use of the application needs a stand-in there.

Slicer versions: 5.10 or later. Version-dependent calls (see the report in the project):
``vtkSegment.SetTerminology`` (5.10), ``slicer.packaging.pip_ensure`` with ``constraints`` (5.12; before,
``slicer.util.pip_install`` with ``-c``), ``SampleDataLogic.registerCustomSampleDataCategory`` (5.12; skipped before).
Slicer 5.8 is not supported: its Python 3.9 cannot import this file (``X | None`` annotations), and it has no
``vtkSegment.SetTerminology``.
"""


import enum
import html
import importlib.metadata
import importlib.util
import json
import logging
import os
import pathlib
import re
import shutil
import time
import unittest
from collections.abc import Callable
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from AbdoSegLib.organs import ORGANS
from AbdoSegLib.resources import DEFAULT_BUNDLE, SAMPLE_CT, SAMPLE_REFERENCE
from AbdoSegLib.surfaces.options import COORDINATES, DEFAULT_COORDINATES, SCENE_FORMATS, SMOOTHING_FACTOR

PROJECT_URL = "https://github.com/abdoseg/SlicerAbdoSeg"
SAMPLE_CT_URL = "https://raw.githubusercontent.com/abdoseg/SlicerAbdoSeg/main/AbdoSeg/Resources/SampleData/AbdoSegSampleCT.nii.gz"
SAMPLE_CT_SHA256 = "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1"
SAMPLE_NAME = "AbdoSegSampleCT"

MINIMUM_TORCH_VERSION = "2.1"
REQUIREMENTS_FILE = pathlib.Path(__file__).resolve().parent / "Resources" / "requirements.txt"
"""pip requirements besides PyTorch (which the PyTorch extension installs): one per line, # comments."""
POLL_INTERVAL_MS = 100


def pythonRequirements() -> list[str]:
    """The requirements of REQUIREMENTS_FILE, without comments and blank lines (pip's rules for both)."""
    lines = (re.sub(r"(^|\s)#.*", "", line).strip() for line in REQUIREMENTS_FILE.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


#
# AbdoSeg
#


class AbdoSeg(ScriptedLoadableModule):
    """Module metadata (see ScriptedLoadableModule in Slicer's Base/Python/slicer)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("AbdoSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["AbdoSeg contributors"]
        self.parent.helpText = _(
            """
Segments the liver, right kidney, left kidney and spleen in abdominal CT with a 3D V-Net,
shows them as 3D surfaces, compares them with a reference segmentation (Dice, Hausdorff
distances, surface Dice, volumes) and exports the surfaces (STL, OBJ, PLY).
Right and left are the patient's. The segmentation runs in a separate process: Slicer stays
responsive and the Apply button becomes Cancel while it runs.
The same engine runs without Slicer from the command line (<code>abdoseg segment</code>).
See the <a href="{url}">project page</a>. Research use only; not for clinical decisions.
"""
        ).format(url=PROJECT_URL)
        self.parent.acknowledgementText = _(
            """
Developed by the AbdoSeg contributors.
The sample CT (AbdoSegSampleCT) comes from the TotalSegmentator dataset (CC BY 4.0):
Wasserthal J. et al., "TotalSegmentator: robust segmentation of 104 anatomic structures in CT images",
Radiology: Artificial Intelligence, 2023; file tests/reference_files/example_ct.nii.gz of
<a href="https://github.com/wasserth/TotalSegmentator">TotalSegmentator</a> (Apache-2.0).
Its reference labels are TotalSegmentator's prediction mapped to AbdoSeg's organs, not a manual segmentation.
"""
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data
#


def registerSampleData():
    """Add the sample CT to the Sample Data module (the copy shipped with the module, else the project's)."""
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    uri = SAMPLE_CT.as_uri() if SAMPLE_CT.is_file() else SAMPLE_CT_URL
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):  # Slicer 5.12+
        SampleData.SampleDataLogic.registerCustomSampleDataCategory("AbdoSeg", title=_("AbdoSeg"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="AbdoSeg",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(iconsPath, f"{SAMPLE_NAME}.png"),
        uris=uri,
        fileNames=f"{SAMPLE_NAME}.nii.gz",
        checksums=f"SHA256:{SAMPLE_CT_SHA256}",
        nodeNames=SAMPLE_NAME,
    )


#
# Parameter node
#


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self) -> str:
        return {"auto": _("Automatic (GPU if available)"), "cpu": _("CPU"), "cuda": _("GPU (CUDA)")}[self.value]


_FORMAT_LABELS = {"stl": _("STL (one file per organ)"), "obj": _("OBJ (one file, with colours)"), "ply": _("PLY (with colours)")}
_COORDINATE_LABELS = {"lps": _("LPS (Slicer's default)"), "ras": _("RAS")}

# The choices come from AbdoSegLib.surfaces.options, the one place that names them; members are
# named by the upper-case value (STL, LPS, ...), which is what the parameter node stores.
SurfaceFormat = enum.Enum("SurfaceFormat", [(fmt.upper(), fmt) for fmt in SCENE_FORMATS])
SurfaceFormat.label = lambda self: _FORMAT_LABELS.get(self.value, self.value.upper())
Coordinates = enum.Enum("Coordinates", [(space.upper(), space) for space in COORDINATES])
Coordinates.label = lambda self: _COORDINATE_LABELS.get(self.value, self.value.upper())


@parameterNodeWrapper
class AbdoSegParameterNode:
    """The module's choices, kept in the scene.

    inputVolume - the CT to segment.
    outputSegmentation - receives one segment per organ (created on Apply if empty).
    useBundledModel - segment with the model that comes with the module, found where this installation keeps it
      at each run (a scene saved on another computer or before an update still finds it).
    modelPath - another model bundle (.safetensors), used as given when useBundledModel is off.
    device - where the network runs.
    smoothingFactor - Slicer's "Smoothing factor" for the 3D surfaces (0 none .. 1 strong).
    referenceSegmentation - a segmentation to compare the result with.
    metricsTable - receives the comparison (created on Compare if empty).
    exportFolder, exportFormat, exportCoordinates, exportMerge - where and how surfaces are written.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    useBundledModel: bool = True
    modelPath: pathlib.Path = DEFAULT_BUNDLE  # where the file browser starts
    device: Device = Device.AUTO
    smoothingFactor: Annotated[float, WithinRange(0.0, 1.0)] = SMOOTHING_FACTOR
    referenceSegmentation: vtkMRMLSegmentationNode
    metricsTable: vtkMRMLTableNode
    exportFolder: pathlib.Path = pathlib.Path.home()
    exportFormat: SurfaceFormat = SurfaceFormat(SCENE_FORMATS[0])
    exportCoordinates: Coordinates = Coordinates(DEFAULT_COORDINATES)
    exportMerge: bool = False


#
# AbdoSegWidget
#


class AbdoSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: choices in a parameter node, work in AbdoSegLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AbdoSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = AbdoSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.progressBar.hide()

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:
            self.logic.cancel()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic:
            self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: AbdoSegParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # The .ui file names each connected widget's parameter in its "SlicerParameterName" property.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    def updateButtons(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        if self.logic.isRunning():
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the segmentation")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Apply")
            ready = bool(parameters and parameters.inputVolume)
            self.ui.applyButton.enabled = ready
            self.ui.applyButton.toolTip = _("Segment the organs") if ready else _("Select an input CT volume")
        hasResult = bool(parameters and parameters.outputSegmentation)
        self.ui.compareButton.enabled = hasResult and bool(parameters.referenceSegmentation) and not self.logic.isRunning()
        self.ui.exportButton.enabled = hasResult and not self.logic.isRunning()
        self.ui.modelPathLineEdit.enabled = bool(parameters and not parameters.useBundledModel)

    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.ui.statusLabel.text = _("Cancelling...")
            self.logic.cancel()
            return
        parameters = self._parameterNode
        modelPath = None if parameters.useBundledModel else parameters.modelPath
        self.ui.logTextEdit.clear()
        self.ui.resultsLabel.text = ""
        self.ui.statusLabel.text = ""
        try:
            with slicer.util.tryWithErrorDisplay(_("The segmentation could not be started."), waitCursor=True):
                self.logic.checkInputs(parameters.inputVolume, modelPath)  # before anything is installed or added to the scene
                self.logic.setupPythonRequirements(askConfirmation=True)
                self.logic.startSegmentation(
                    parameters.inputVolume,
                    parameters.outputSegmentation,
                    modelPath=modelPath,
                    device=parameters.device.value,
                    smoothingFactor=parameters.smoothingFactor,
                    progressCallback=self.onProgress,
                    logCallback=self.onLog,
                    completedCallback=self.onCompleted,
                )
                if self.logic.isRunning():  # a command that could not start has already been reported by onCompleted
                    parameters.outputSegmentation = self.logic.segmentationNode
                    self.ui.progressBar.value = 0
                    self.ui.progressBar.show()
                    self.ui.statusLabel.text = _("Starting...")
        finally:  # tryWithErrorDisplay shows the error and raises it again
            self.updateButtons()

    def onProgress(self, percent, stage, message) -> None:
        if percent is not None:
            self.ui.progressBar.value = percent
        self.ui.statusLabel.text = f"{stage}: {message}"

    def onLog(self, line) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onCompleted(self, result) -> None:
        """``result``: the run's AbdoSegLib.process.SegmentationResult."""
        self.ui.progressBar.hide()
        self.updateButtons()
        if result.status == "completed":
            self.ui.statusLabel.text = result.message
            self.ui.resultsLabel.text = self.resultsHtml(result)
        elif result.status == "cancelled":
            self.ui.statusLabel.text = _("Cancelled.")
        else:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(
                _("The segmentation failed: {message}").format(message=result.message), detailedText="\n".join(result.log[-40:])
            )

    @staticmethod
    def resultsHtml(result) -> str:
        rows = []
        for organ in ORGANS:
            values = result.summary.get("organs", {}).get(organ.name)
            if values is None:
                continue
            if values.get("voxels"):
                volume = _("{volume:.1f} mL").format(volume=values["volume_ml"])
                confidence = _("confidence {confidence:.2f}").format(confidence=values["confidence"]) if values.get("confidence") is not None else ""
            else:
                volume, confidence = _("not found"), html.escape(values.get("reason") or "")
            rows.append(f"<tr><td>{organ.title}</td><td align='right'>{volume}</td><td>&nbsp;{confidence}</td></tr>")
        text = "<table>" + "".join(rows) + "</table>"
        for warning in result.warnings:
            text += f"<p style='color:#c06000'>&#9888; {html.escape(warning)}</p>"
        return text

    def onCompareButton(self) -> None:
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("The comparison failed."), waitCursor=True):
            self.logic.setupPythonRequirements(askConfirmation=True)
            table, metrics = self.logic.compareSegmentations(
                parameters.outputSegmentation, parameters.referenceSegmentation, tableNode=parameters.metricsTable
            )
            parameters.metricsTable = table
            self.logic.showTable(table)
            if "region" in metrics:  # organ labels outside the region both fields of view cover were left out: say so
                slicer.util.warningDisplay(metrics["region"]["note"], windowTitle=_("Comparison"))

    def onExportButton(self) -> None:
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("The export failed."), waitCursor=True):
            files = self.logic.exportSurfaces(
                parameters.outputSegmentation,
                parameters.exportFolder,
                parameters.exportFormat.value,
                lps=parameters.exportCoordinates.value == "lps",
                merge=parameters.exportMerge,
                smoothingFactor=parameters.smoothingFactor,
            )
            slicer.util.infoDisplay(
                _("{count} files written to {folder} ({coordinates} coordinates, mm).").format(
                    count=len(files), folder=parameters.exportFolder, coordinates=parameters.exportCoordinates.value.upper()
                ),
                detailedText="\n".join(str(path) for path in files),
            )


#
# AbdoSegLogic
#


class DependencyError(RuntimeError):
    """A Python package that AbdoSeg needs is missing and was not installed (the message says what to do)."""


class AbdoSegLogic(ScriptedLoadableModuleLogic):
    """Segmentation, comparison and export; usable without the widget (scripts, tests)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.process = None  # the running or last AbdoSegLib.process.SegmentationProcess
        self.lastResult = None  # the last run's AbdoSegLib.process.SegmentationResult
        self.segmentationNode = None  # the segmentation node of the running or last run
        self.keepTemporaryFiles = False
        self.moduleDir = os.path.dirname(os.path.abspath(__file__))
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._poll)

    def getParameterNode(self):
        return AbdoSegParameterNode(super().getParameterNode())

    # Dependencies ------------------------------------------------------------------------

    @staticmethod
    def missingRequirements() -> list[str]:
        """The pythonRequirements() that are not installed, or not in a suitable version."""
        from packaging.requirements import Requirement

        missing = []
        for text in pythonRequirements():
            requirement = Requirement(text)
            try:
                version = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(text)
                continue
            if not requirement.specifier.contains(version, prereleases=True):
                missing.append(text)
        return missing

    def setupPythonRequirements(self, askConfirmation: bool = True) -> None:
        """Install PyTorch (through the PyTorch extension) and the other packages, after asking.

        The other packages are installed with torch pinned to its installed version (a pip constraint), so that
        none of them can replace the user's PyTorch and its CUDA build; the question names the packages and
        PyTorch's version. Raises DependencyError when something is missing and was not installed.
        """
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise DependencyError(
                _("AbdoSeg needs the PyTorch extension. Install it from the Extensions Manager, restart Slicer, and try again.")
            ) from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}")
            if torch is None:
                raise DependencyError(_("AbdoSeg needs PyTorch, which was not installed. Install it in the PyTorch Utils module."))
        else:
            from packaging.version import Version

            installed = importlib.metadata.version("torch")
            if Version(installed) < Version(MINIMUM_TORCH_VERSION):
                raise DependencyError(
                    _("PyTorch {installed} is too old; AbdoSeg needs {minimum} or later. Update it in the PyTorch Utils module.").format(
                        installed=installed, minimum=MINIMUM_TORCH_VERSION
                    )
                )

        missing = self.missingRequirements()
        if not missing:
            return
        import subprocess
        import tempfile

        torchVersion = importlib.metadata.version("torch")
        packages = ", ".join(missing)
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _(
                "AbdoSeg needs these Python packages: {packages}. Installing them needs a network connection and may take a few minutes; "
                "PyTorch stays at version {torch}."
            ).format(packages=packages, torch=torchVersion),
            _("AbdoSeg - install Python packages"),
            detailedText="\n".join(missing),
        ):
            raise DependencyError(_("AbdoSeg cannot run without these Python packages: {packages}").format(packages=packages))
        try:
            import slicer.packaging as slicerPackaging  # Slicer 5.12+
        except ImportError:
            slicerPackaging = None
        with tempfile.TemporaryDirectory(prefix="AbdoSeg-") as folder:
            constraints = pathlib.Path(folder) / "constraints.txt"
            constraints.write_text(f"torch=={torchVersion}\n", encoding="utf-8")
            try:
                if slicerPackaging is not None:
                    slicerPackaging.pip_ensure(missing, constraints=constraints, prompt_install=False, requester="AbdoSeg", skip_in_testing=False)
                else:  # Slicer 5.10: pip_install hands a list to pip install as it is
                    slicer.util.pip_install([*missing, "-c", str(constraints)])
            except subprocess.CalledProcessError as error:
                raise DependencyError(
                    _("Installing {packages} with PyTorch kept at {torch} failed; the Python console shows pip's message.").format(
                        packages=packages, torch=torchVersion
                    )
                ) from error

    # Segmentation ------------------------------------------------------------------------

    def isRunning(self) -> bool:
        return self.process is not None and self.process.running

    @staticmethod
    def modelFile(modelPath=None) -> pathlib.Path:
        """The model bundle to segment with: ``modelPath`` as given, or the bundled model when it is None.

        The bundled model is looked up here, at run time, where this installation keeps it (never stored
        in the scene). Raises ValueError, in one sentence, for a file that does not exist.
        """
        if modelPath is None:
            if not DEFAULT_BUNDLE.is_file():
                raise ValueError(_("The bundled model {path} is missing: reinstall the AbdoSeg extension.").format(path=DEFAULT_BUNDLE))
            return DEFAULT_BUNDLE
        path = pathlib.Path(modelPath)
        if not path.is_file():
            raise ValueError(
                _(
                    "The model file {path} does not exist (a scene keeps the path it had on the computer where it was saved): "
                    'choose the file again, or tick "Bundled model" under Advanced to use the model that comes with AbdoSeg.'
                ).format(path=path)
            )
        return path

    @staticmethod
    def pythonSlicer() -> str:
        """Slicer's Python interpreter (PythonSlicer, on the PATH that Slicer's launcher sets), which runs the command."""
        path = shutil.which("PythonSlicer")
        if not path:
            raise RuntimeError(_("PythonSlicer, Slicer's Python interpreter, is not on the PATH: start Slicer with its launcher, or reinstall it."))
        return path

    def checkInputs(self, inputVolume, modelPath=None) -> tuple[pathlib.Path, str]:
        """Check what a run needs before anything is installed, written or added to the scene.

        Returns (model bundle file, PythonSlicer); raises with one sentence saying what is wrong.
        """
        if self.isRunning():
            raise RuntimeError(_("A segmentation is already running."))
        if inputVolume is None or inputVolume.GetImageData() is None:
            raise ValueError(_("Select an input volume that holds an image."))
        return self.modelFile(modelPath), self.pythonSlicer()

    def startSegmentation(
        self,
        inputVolume,
        outputSegmentation=None,
        modelPath=None,
        device: str = "auto",
        smoothingFactor: float = SMOOTHING_FACTOR,
        progressCallback: Callable | None = None,
        logCallback: Callable | None = None,
        completedCallback: Callable | None = None,
    ):
        """Start segmenting ``inputVolume``; returns the SegmentationProcess at once.

        The inputs are checked (``checkInputs``), the volume is written to a temporary NRRD file,
        ``abdoseg segment`` runs on it in a separate process, and when it ends the labels are imported
        into the segmentation node (AbdoSegLib.scene), closed surfaces are built with ``smoothingFactor``
        and ``completedCallback(SegmentationResult)`` is called (at once, from here, for a process that
        could not start). ``progressCallback(percent, stage, message)`` and ``logCallback(line)`` follow
        the command's output (see AbdoSegLib.process).

        outputSegmentation: the segmentation node that receives the organs; None: a new one, named after the
        volume, is added to the volume's scene just before the process starts, and removed again if the run
        ends without a result (it could not start, failed or was cancelled). ``segmentationNode`` is the run's node.
        modelPath: a model bundle file; None: the bundled model (``modelFile``).
        """
        import tempfile

        from AbdoSegLib import scene
        from AbdoSegLib.process import SegmentationProcess, segment_command

        modelFile, pythonSlicer = self.checkInputs(inputVolume, modelPath)
        tempDir = tempfile.mkdtemp(prefix="AbdoSeg-", dir=slicer.app.temporaryPath)
        inputFile = os.path.join(tempDir, "input.nrrd")
        outputDir = os.path.join(tempDir, "output")
        try:
            scene.write_volume(inputVolume, inputFile)
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        # "--device cuda" without a CUDA GPU is refused by the command itself, in one sentence.
        command = segment_command(pythonSlicer, inputFile, outputDir, modelFile, device)
        createdNode = None
        if outputSegmentation is None:
            mrmlScene = inputVolume.GetScene()
            outputSegmentation = createdNode = mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", mrmlScene.GenerateUniqueName(f"{inputVolume.GetName()} organs")
            )
        self.segmentationNode = outputSegmentation
        startTime = time.monotonic()

        def finished(processResult) -> None:
            self._pollTimer.stop()
            result = self._finishSegmentation(processResult, inputVolume, outputSegmentation, outputDir, smoothingFactor, startTime)
            if createdNode is not None and result.status != "completed":
                self.removeNode(createdNode)
            if not self.keepTemporaryFiles:
                shutil.rmtree(tempDir, ignore_errors=True)
            self.lastResult = result
            if completedCallback:
                completedCallback(result)

        # The startup environment, as slicer.util.launchConsoleProcess gives it: PythonSlicer sets up its own.
        self.process = SegmentationProcess(
            command, cwd=self.moduleDir, env=slicer.util.startupEnvironment(),
            on_progress=progressCallback, on_log=logCallback, on_finished=finished,
        )
        logging.info(f"AbdoSeg: running {' '.join(command)}")
        self.process.start()
        if self.process.running:
            self._pollTimer.start()
        return self.process

    def _poll(self) -> None:
        """QTimer: hand the command's output to the callbacks on the GUI thread."""
        if self.process is not None:
            self.process.poll()

    def cancel(self) -> None:
        """Stop the running segmentation (returns at once; the completed callback reports "cancelled")."""
        if self.isRunning():
            self.process.cancel()

    @staticmethod
    def removeNode(node) -> None:
        """Remove a node and its display nodes from its scene (MRML would leave the display nodes behind)."""
        mrmlScene = node.GetScene()
        if mrmlScene is None:  # already gone (the scene was closed)
            return
        for index in reversed(range(node.GetNumberOfDisplayNodes())):
            mrmlScene.RemoveNode(node.GetNthDisplayNode(index))
        mrmlScene.RemoveNode(node)

    def _finishSegmentation(self, processResult, inputVolume, outputSegmentation, outputDir, smoothingFactor, startTime):
        """The run's SegmentationResult; for a completed command, after importing its labels into the scene."""
        from AbdoSegLib import scene
        from AbdoSegLib.io.image_files import read_image
        from AbdoSegLib.outputs import LABELS_FILE, SUMMARY_FILE
        from AbdoSegLib.process import SegmentationResult

        if processResult.status != "completed":
            return processResult
        try:
            with open(os.path.join(outputDir, SUMMARY_FILE), encoding="utf-8") as file:
                summary = json.load(file)
            warnings = self.qualityWarnings(summary)
            labels = read_image(os.path.join(outputDir, LABELS_FILE))
            scene.segmentation_from_labelmap(labels, inputVolume, segmentation_node=outputSegmentation)
            scene.create_closed_surfaces(outputSegmentation, smoothingFactor)
            self.showSegmentation(outputSegmentation)
        except Exception as error:  # noqa: BLE001 - any import problem is reported as the run's failure
            logging.exception("AbdoSeg: importing the results failed")
            return SegmentationResult("failed", _("the results could not be imported: {error}").format(error=error), log=processResult.log)
        seconds = time.monotonic() - startTime
        message = _("Done in {seconds:.0f} s on {device}.").format(seconds=seconds, device=summary.get("device", "?"))
        return SegmentationResult("completed", message, summary, warnings, processResult.log, segmentation_node=outputSegmentation)

    @staticmethod
    def qualityWarnings(summary: dict) -> list[str]:
        """The QA warnings that ``abdoseg segment`` wrote into its summary (a complete run always writes them)."""
        from AbdoSegLib.outputs import SUMMARY_FILE

        try:
            return [str(warning) for warning in summary["qa"]["warnings"]]
        except (KeyError, TypeError):
            raise ValueError(_("{file} has no QA warnings: the segmentation did not complete.").format(file=SUMMARY_FILE)) from None

    @staticmethod
    def showSegmentation(segmentationNode) -> None:
        """Show the segmentation in the slice views and its closed surfaces in 3D."""
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is None:
            segmentationNode.CreateDefaultDisplayNodes()
            displayNode = segmentationNode.GetDisplayNode()
        displayNode.SetVisibility(True)
        displayNode.SetPreferredDisplayRepresentationName3D(slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName())
        layoutManager = slicer.app.layoutManager()
        if layoutManager and layoutManager.threeDViewCount > 0:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()

    # Comparison and export ---------------------------------------------------------------

    def compareSegmentations(self, segmentationNode, referenceNode, tableNode=None, mapping=None):
        """Metrics of ``segmentationNode`` against ``referenceNode`` in a table node; returns (table, metrics)."""
        from AbdoSegLib import scene

        if segmentationNode is None or referenceNode is None:
            raise ValueError(_("Select both a segmentation and a reference segmentation."))
        metrics = scene.compare_segmentations(segmentationNode, referenceNode, mapping)
        name = slicer.mrmlScene.GenerateUniqueName(f"{segmentationNode.GetName()} vs {referenceNode.GetName()}")
        table = scene.metrics_table(segmentationNode.GetScene(), metrics, tableNode, name)
        return table, metrics

    @staticmethod
    def showTable(tableNode) -> None:
        """Show a table node in a layout with a table view."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(tableNode.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    def exportSurfaces(self, segmentationNode, folder, fmt=SCENE_FORMATS[0], lps=DEFAULT_COORDINATES == "lps", merge=False, smoothingFactor=None):
        """Write the segmentation's closed surfaces to ``folder``; returns the files written."""
        from AbdoSegLib import scene

        if segmentationNode is None:
            raise ValueError(_("Select a segmentation to export."))
        if smoothingFactor is not None:
            scene.create_closed_surfaces(segmentationNode, smoothingFactor)
        return scene.export_surfaces(segmentationNode, folder, fmt, lps=lps, merge=merge)


#
# AbdoSegTest
#


class AbdoSegTest(ScriptedLoadableModuleTest):
    """Self-test: Reload & Test, and the module's ctest.

    test_AbdoSegSceneLogic needs only what Slicer ships (no network, no PyTorch: the extension build machines run
    it): the bundled sample CT and its bundled reference labels through the scene logic (segments, terminology,
    closed surfaces, STL export). test_AbdoSegCompare needs the packages of the comparison, and test_AbdoSegSample
    and test_AbdoSegCancel (the click-to-segment path: the sample segmented in PythonSlicer, a run cancelled)
    need PyTorch and every package of Resources/requirements.txt. A self-test never installs anything: where
    something is missing, these tests are skipped (unittest's skip, which ctest counts as passed) and say what.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        # Reload & Test calls runTest itself, outside unittest's runner: a skip is shown here.
        for test in (self.test_AbdoSegSceneLogic, self.test_AbdoSegCompare, self.test_AbdoSegSample, self.test_AbdoSegCancel):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as skipped:
                self.delayDisplay(f"{test.__name__} skipped: {skipped}")

    def test_AbdoSegSceneLogic(self):
        """A segmentation from the bundled reference labels: four named, coded segments, closed surfaces, STL files."""
        from AbdoSegLib import scene

        self.delayDisplay("Building a segmentation from the bundled reference labels")
        volume, labels = self._loadSample()
        segmentation = scene.segmentation_from_labelmap(labels, volume, name="AbdoSeg sample reference")
        scene.create_closed_surfaces(segmentation, SMOOTHING_FACTOR)
        self._checkSegments(segmentation)
        self.delayDisplay("Exporting STL surfaces")
        self._checkStlExport(AbdoSegLogic(), segmentation, volume)
        self.delayDisplay("Scene logic test passed")

    def test_AbdoSegCompare(self):
        """The comparison table of two segmentations of the same labels: Dice 1 and Hausdorff 0 for every organ."""
        from AbdoSegLib import scene

        volume, labels = self._loadSample()
        segmentation = scene.segmentation_from_labelmap(labels, volume, name="AbdoSeg sample")
        reference = scene.segmentation_from_labelmap(labels, volume, name="AbdoSeg reference")
        try:
            table, metrics = AbdoSegLogic().compareSegmentations(segmentation, reference)
        except ModuleNotFoundError as error:
            if error.name.startswith("AbdoSegLib"):
                raise
            self.skipTest(f"missing here for comparing: the Python package {error.name}; a self-test installs nothing")
        self.assertEqual(table.GetNumberOfRows(), len(ORGANS))
        for organ in ORGANS:
            self.assertEqual(metrics[organ.name]["status"], "compared", organ.name)
            self.assertAlmostEqual(metrics[organ.name]["dice"], 1.0, msg=organ.name)
            self.assertEqual(metrics[organ.name]["hd"], 0.0, organ.name)
        self.delayDisplay("Comparison test passed")

    def test_AbdoSegSample(self):
        """Apply on the sample CT as the widget does it, then compare with the bundled reference and export STL files."""
        from AbdoSegLib import scene

        self._skipUnlessSegmentationCanRun()
        volume, labels = self._loadSample()
        logic = AbdoSegLogic()
        self.delayDisplay("Segmenting the sample CT (seconds on a GPU, under a minute on a CPU)")
        progress, results = [], []
        logic.startSegmentation(volume, device="auto", progressCallback=lambda *update: progress.append(update), completedCallback=results.append)
        self.assertTrue(logic.isRunning())
        self._processEventsUntil(lambda: results, timeoutSeconds=300)
        self.assertEqual([result.status for result in results], ["completed"], results[0].message)
        self.assertEqual(progress[-1][0], 100)
        segmentation = results[0].segmentation_node
        self.assertIs(segmentation, logic.segmentationNode)
        self._checkSegments(segmentation)

        self.delayDisplay("Comparing with the bundled reference")
        reference = scene.segmentation_from_labelmap(labels, volume, name="AbdoSeg reference")
        table, metrics = logic.compareSegmentations(segmentation, reference)
        self.assertEqual(table.GetNumberOfRows(), len(ORGANS))
        for organ in ORGANS:  # the bundled model measures 0.91-0.95 on its sample
            self.assertGreater(metrics[organ.name]["dice"], 0.8, organ.name)
        self._checkStlExport(logic, segmentation, volume)
        self.delayDisplay("Segmentation test passed")

    def test_AbdoSegCancel(self):
        """Cancel a live run: it ends "cancelled", its whole process tree is gone, the segmentation made for it removed."""
        self._skipUnlessSegmentationCanRun()
        import psutil

        volume = self._loadSample()[0]
        logic = AbdoSegLogic()
        results = []
        process = logic.startSegmentation(volume, device="cpu", completedCallback=results.append)
        self.assertTrue(logic.isRunning())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 1)
        launcher = psutil.Process(process.proc.pid)
        # PythonSlicer is a launcher: wait until it has started Python (or has ended).
        self._processEventsUntil(lambda: launcher.children(recursive=True) or not launcher.is_running(), timeoutSeconds=60)
        tree = [launcher, *launcher.children(recursive=True)]
        logic.cancel()
        self._processEventsUntil(lambda: results, timeoutSeconds=60)
        self.assertEqual([result.status for result in results], ["cancelled"])
        self.assertFalse(logic.isRunning())
        _gone, alive = psutil.wait_procs(tree, timeout=10)
        self.assertEqual(alive, [])
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 0)
        self.delayDisplay("Cancel test passed")

    # Helpers --------------------------------------------------------------------------------

    def _skipUnlessSegmentationCanRun(self) -> None:
        """Skip, saying what is missing, unless PyTorch, the Python packages and PythonSlicer are all there."""
        missing = [] if importlib.util.find_spec("torch") else ["torch"]
        missing += AbdoSegLogic.missingRequirements()
        if not shutil.which("PythonSlicer"):
            missing.append("PythonSlicer")
        if missing:
            self.skipTest(
                f"missing here for segmenting: {', '.join(missing)}; a self-test installs nothing "
                "(click Apply once to install the packages, then run the test again)"
            )

    def _loadSample(self):
        """The bundled sample CT (volume node) and its reference labels (an AbdoSegLib Image), read by Slicer's own reader."""
        from AbdoSegLib import scene

        nodes = []
        for className, path in (("vtkMRMLScalarVolumeNode", SAMPLE_CT), ("vtkMRMLLabelMapVolumeNode", SAMPLE_REFERENCE)):
            node = slicer.mrmlScene.AddNewNodeByClass(className, path.name.split(".")[0])
            storageNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
            storageNode.SetFileName(str(path))
            node.SetAndObserveStorageNodeID(storageNode.GetID())
            self.assertTrue(storageNode.ReadData(node), str(path))
            nodes.append(node)
        return nodes[0], scene.image_from_volume(nodes[1])

    @staticmethod
    def _processEventsUntil(condition, timeoutSeconds: float) -> None:
        """Run the application's events (where the module's QTimer polls the process) until ``condition()`` holds."""
        deadline = time.monotonic() + timeoutSeconds
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing after {timeoutSeconds} s")
            slicer.app.processEvents()
            time.sleep(0.02)

    def _checkSegments(self, segmentationNode) -> None:
        """One segment per organ, in the organ table's order, names and terminology; each with a closed surface."""
        segmentation = segmentationNode.GetSegmentation()
        segmentIds = segmentation.GetSegmentIDs()
        self.assertEqual([segmentation.GetSegment(i).GetName() for i in segmentIds], [organ.title for organ in ORGANS])
        self.assertEqual([segmentation.GetSegment(i).GetTerminology() for i in segmentIds], [organ.terminology_string for organ in ORGANS])
        for organ, segmentId in zip(ORGANS, segmentIds):
            surface = vtk.vtkPolyData()
            self.assertTrue(segmentationNode.GetClosedSurfaceRepresentation(segmentId, surface), organ.name)
            self.assertGreater(surface.GetNumberOfPoints(), 100, organ.name)
            edges = vtk.vtkFeatureEdges()  # a closed surface has no boundary edge
            edges.SetInputData(surface)
            edges.BoundaryEdgesOn()
            edges.FeatureEdgesOff()
            edges.NonManifoldEdgesOff()
            edges.ManifoldEdgesOff()
            edges.Update()
            self.assertEqual(edges.GetOutput().GetNumberOfCells(), 0, organ.name)

    def _checkStlExport(self, logic, segmentationNode, volumeNode) -> None:
        """One STL file per organ (LPS), each a surface inside the volume's bounds."""
        import tempfile

        folder = tempfile.mkdtemp(prefix="AbdoSegTest-", dir=slicer.app.temporaryPath)
        try:
            files = logic.exportSurfaces(segmentationNode, folder, "stl", lps=True)
            self.assertEqual(len(files), len(ORGANS))
            bounds = [0.0] * 6
            volumeNode.GetRASBounds(bounds)
            lpsLow, lpsHigh = [-bounds[1], -bounds[3], bounds[4]], [-bounds[0], -bounds[2], bounds[5]]
            for path in files:
                reader = vtk.vtkSTLReader()
                reader.SetFileName(str(path))
                reader.Update()
                mesh = reader.GetOutput()
                self.assertGreater(mesh.GetNumberOfPoints(), 100, str(path))
                meshBounds = mesh.GetBounds()
                for axis in range(3):
                    self.assertGreaterEqual(meshBounds[2 * axis], lpsLow[axis] - 1.0, str(path))
                    self.assertLessEqual(meshBounds[2 * axis + 1], lpsHigh[axis] + 1.0, str(path))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
