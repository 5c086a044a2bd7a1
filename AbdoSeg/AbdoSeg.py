"""AbdoSeg: segment the liver, kidneys and spleen in abdominal CT (3D Slicer module; layer 3 of DESIGN.md).

This file is the thin Slicer part: module metadata, sample data, the parameter node, the
widget, and a logic that runs the engine's command line (``abdoseg segment``) in a separate
process, so that Slicer stays responsive, then hands the results to ``AbdoSegLib.scene``
(layer 2), which builds the segmentation node, its surfaces, the exports and the metrics table.

Heavy packages (torch, monai, nibabel, scipy, ...) are never imported here at module level:
Slicer's Python gets them on first use (``AbdoSegLogic.setupPythonRequirements``).

Slicer versions: 5.10 or later. Version-dependent calls (see the report in the project):
``vtkSegment.SetTerminology`` (5.10), ``slicer.packaging.pip_ensure`` (5.12; ``slicer.util.pip_install``
before), ``SampleDataLogic.registerCustomSampleDataCategory`` (5.12; skipped before).
"""


import enum
import html
import importlib.metadata
import json
import logging
import os
import pathlib
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Callable

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

PROJECT_URL = "https://github.com/abdoseg/SlicerAbdoSeg"
SAMPLE_CT_URL = "https://raw.githubusercontent.com/abdoseg/SlicerAbdoSeg/main/AbdoSeg/Resources/SampleData/AbdoSegSampleCT.nii.gz"
SAMPLE_CT_SHA256 = "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1"
SAMPLE_NAME = "AbdoSegSampleCT"

LABELS_FILE = "labels.nii.gz"
SUMMARY_FILE = "summary.json"
"""Files that ``abdoseg segment`` writes (AbdoSegLib.commands.segment, not imported here: it loads torch)."""

MINIMUM_TORCH_VERSION = "2.1"
PYTHON_REQUIREMENTS = [
    # numpy, scipy and pillow come with Slicer (5.10: numpy 2.0, scipy 1.13, pillow 11.2); listed so that a
    # too old one is noticed. SimpleITK and VTK come with Slicer and must never be installed with pip into it.
    "numpy>=1.24",
    "scipy>=1.10",
    "pillow>=10.1",
    "nibabel>=5.0",
    "pynrrd>=1.0",
    "slicerio>=1.0",
    "safetensors>=0.4",
    "monai>=1.3",
    "tqdm>=4.60",
    "psutil>=5.9",  # to stop the whole process tree on Cancel (PythonSlicer is a launcher)
]
"""pip requirements besides PyTorch (which the PyTorch extension installs)."""

# Share of the progress bar that each stage of ``abdoseg segment --progress json`` fills (percent).
STAGE_PROGRESS = {
    "read": (0, 5),
    "preprocess": (5, 10),
    "inference": (10, 85),
    "postprocess": (85, 95),
    "write": (95, 100),
    "done": (100, 100),
}


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


class SurfaceFormat(enum.Enum):
    STL = "STL"
    OBJ = "OBJ"
    PLY = "PLY"

    def label(self) -> str:
        return {"STL": _("STL (one file per organ)"), "OBJ": _("OBJ (one file, with colours)"), "PLY": _("PLY (with colours)")}[self.value]


class Coordinates(enum.Enum):
    LPS = "LPS"
    RAS = "RAS"

    def label(self) -> str:
        return {"LPS": _("LPS (Slicer's default)"), "RAS": _("RAS")}[self.value]


@parameterNodeWrapper
class AbdoSegParameterNode:
    """The module's choices, kept in the scene.

    inputVolume - the CT to segment.
    outputSegmentation - receives one segment per organ (created on Apply if empty).
    modelPath - the model bundle (.safetensors) that the command line loads.
    device - where the network runs.
    smoothingFactor - Slicer's "Smoothing factor" for the 3D surfaces (0 none .. 1 strong).
    referenceSegmentation - a segmentation to compare the result with.
    metricsTable - receives the comparison (created on Compare if empty).
    exportFolder, exportFormat, exportCoordinates, exportMerge - where and how surfaces are written.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelPath: pathlib.Path = DEFAULT_BUNDLE
    device: Device = Device.AUTO
    smoothingFactor: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    referenceSegmentation: vtkMRMLSegmentationNode
    metricsTable: vtkMRMLTableNode
    exportFolder: pathlib.Path = pathlib.Path.home()
    exportFormat: SurfaceFormat = SurfaceFormat.STL
    exportCoordinates: Coordinates = Coordinates.LPS
    exportMerge: bool = False


#
# Background process
#


@dataclass
class SegmentationResult:
    """What became of one run: status "completed", "failed" or "cancelled"."""

    status: str
    message: str = ""
    segmentationNode: object = None
    summary: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    log: list = field(default_factory=list)


def parseProgressLine(line: str) -> dict | None:
    """The {"stage", "fraction", "message"} object of a JSON progress line, or None for any other line."""
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if isinstance(value, dict) and "stage" in value and "fraction" in value:
        return value
    return None


def overallPercent(stage: str, fraction: float) -> int | None:
    """Progress bar value (0-100) for a stage's fraction; None for a stage not in STAGE_PROGRESS."""
    if stage not in STAGE_PROGRESS:
        return None
    start, end = STAGE_PROGRESS[stage]
    return int(round(start + (end - start) * min(max(float(fraction), 0.0), 1.0)))


def killProcessTree(pid: int) -> None:
    """Stop a process and every process it started (PythonSlicer is a launcher: killing it alone leaves Python running)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        processes = parent.children(recursive=True) + [parent]
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=10)
    elif os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
    else:
        subprocess.run(["pkill", "-KILL", "-P", str(pid)], capture_output=True, check=False)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


class SegmentationProcess:
    """One ``abdoseg segment`` process: a thread reads its output, a QTimer hands it to the GUI thread.

    progressCallback(percent, stage, message) for each JSON progress line; logCallback(line)
    for every other line; finishedCallback(process) once, after the process has ended
    (returnCode set; cancelled True if ``cancel`` stopped it).
    """

    POLL_INTERVAL_MS = 100
    LOG_LINES_KEPT = 200

    def __init__(self, command: list[str], cwd: str, progressCallback=None, logCallback=None, finishedCallback=None):
        self.command = command
        self.cwd = cwd
        self.progressCallback = progressCallback
        self.logCallback = logCallback
        self.finishedCallback = finishedCallback
        self.proc = None
        self.returnCode = None
        self.cancelled = False
        self.finished = False
        self.logLines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = None
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.poll)

    def start(self) -> None:
        logging.info(f"AbdoSeg: running {' '.join(self.command)}")
        self.proc = slicer.util.launchConsoleProcess(
            self.command, updateEnvironment={"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}, cwd=self.cwd
        )
        self._thread = threading.Thread(target=self._readOutput, daemon=True)
        self._thread.start()
        self._timer.start()

    def _readOutput(self) -> None:
        """Reader thread: every output line into the queue, then the exit code."""
        while True:
            try:
                line = self.proc.stdout.readline()
            except (UnicodeDecodeError, ValueError):
                continue
            if not line:
                break
            self._queue.put(("line", line.rstrip()))
        self.proc.wait()
        self._queue.put(("done", self.proc.returncode))

    def poll(self) -> None:
        """GUI thread: hand over the lines read so far; finish when the process has ended."""
        while True:
            try:
                kind, value = self._queue.get_nowait()
            except queue.Empty:
                return
            if kind == "line":
                progress = parseProgressLine(value)
                if progress is not None:
                    if self.progressCallback:
                        self.progressCallback(overallPercent(progress["stage"], progress["fraction"]), progress["stage"], progress.get("message", ""))
                else:
                    self.logLines = (self.logLines + [value])[-self.LOG_LINES_KEPT :]
                    if self.logCallback:
                        self.logCallback(value)
            else:
                self._timer.stop()
                self.returnCode = value
                self.finished = True
                if self.finishedCallback:
                    self.finishedCallback(self)
                return

    def cancel(self) -> None:
        """Stop the process tree; the finished callback follows once its output is closed."""
        if self.proc is None or self.finished:
            return
        self.cancelled = True
        killProcessTree(self.proc.pid)

    def wait(self, timeoutSeconds: float | None = None) -> None:
        """Block until finished (for scripts and tests), keeping the application's events flowing."""
        start = time.monotonic()
        while not self.finished:
            self.poll()
            slicer.app.processEvents()
            if timeoutSeconds is not None and time.monotonic() - start > timeoutSeconds:
                self.cancel()
                timeoutSeconds = None
            time.sleep(0.02)

    def errorMessage(self) -> str:
        """The command's own one-sentence error ("abdoseg: error: ..."), else the last output line."""
        for line in reversed(self.logLines):
            if line.startswith("abdoseg: error:"):
                return line[len("abdoseg: error:") :].strip()
        return self.logLines[-1] if self.logLines else _("the segmentation process ended with code {code}").format(code=self.returnCode)


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

    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.ui.statusLabel.text = _("Cancelling...")
            self.logic.cancel()
            return
        parameters = self._parameterNode
        self.ui.logTextEdit.clear()
        self.ui.resultsLabel.text = ""
        with slicer.util.tryWithErrorDisplay(_("The segmentation could not be started."), waitCursor=True):
            self.logic.setupPythonRequirements(askConfirmation=True)
            device = parameters.device.value
            if device == "cuda" and not self.logic.cudaAvailable():
                raise ValueError(
                    _(
                        "GPU (CUDA) was chosen, but PyTorch finds no CUDA GPU on this computer (no NVIDIA GPU or driver, "
                        "or PyTorch was installed for the CPU only). Choose Automatic or CPU under Advanced, or reinstall "
                        "PyTorch with CUDA support in the PyTorch Utils module."
                    )
                )
            if not parameters.outputSegmentation:
                parameters.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(f"{parameters.inputVolume.GetName()} organs")
                )
            self.logic.startSegmentation(
                parameters.inputVolume,
                parameters.outputSegmentation,
                modelPath=parameters.modelPath,
                device=device,
                smoothingFactor=parameters.smoothingFactor,
                progressCallback=self.onProgress,
                logCallback=self.onLog,
                completedCallback=self.onCompleted,
            )
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("Starting...")
        self.updateButtons()

    def onProgress(self, percent, stage, message) -> None:
        if percent is not None:
            self.ui.progressBar.value = percent
        self.ui.statusLabel.text = f"{stage}: {message}"

    def onLog(self, line) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onCompleted(self, result: SegmentationResult) -> None:
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
    def resultsHtml(result: SegmentationResult) -> str:
        rows = []
        for organ in ORGANS:
            values = result.summary.get("organs", {}).get(organ.name)
            if values is None:
                continue
            volume = _("{volume:.1f} mL").format(volume=values["volume_ml"]) if values.get("voxels") else _("not found")
            rows.append(f"<tr><td>{organ.title}</td><td align='right'>{volume}</td></tr>")
        text = "<table>" + "".join(rows) + "</table>"
        for warning in result.warnings:
            text += f"<p style='color:#c06000'>&#9888; {html.escape(warning)}</p>"
        return text

    def onCompareButton(self) -> None:
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("The comparison failed."), waitCursor=True):
            self.logic.setupPythonRequirements(askConfirmation=True)
            table, _metrics = self.logic.compareSegmentations(
                parameters.outputSegmentation, parameters.referenceSegmentation, tableNode=parameters.metricsTable
            )
            parameters.metricsTable = table
            self.logic.showTable(table)

    def onExportButton(self) -> None:
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("The export failed."), waitCursor=True):
            files = self.logic.exportSurfaces(
                parameters.outputSegmentation,
                parameters.exportFolder,
                parameters.exportFormat.value,
                lps=parameters.exportCoordinates == Coordinates.LPS,
                merge=parameters.exportMerge,
                smoothingFactor=parameters.smoothingFactor,
            )
            slicer.util.infoDisplay(
                _("{count} files written to {folder} ({coordinates} coordinates, mm).").format(
                    count=len(files), folder=parameters.exportFolder, coordinates=parameters.exportCoordinates.value
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
        self.process: SegmentationProcess | None = None
        self.lastResult: SegmentationResult | None = None
        self.keepTemporaryFiles = False
        self.moduleDir = os.path.dirname(os.path.abspath(__file__))

    def getParameterNode(self):
        return AbdoSegParameterNode(super().getParameterNode())

    # Dependencies ------------------------------------------------------------------------

    @staticmethod
    def missingRequirements() -> list[str]:
        """The PYTHON_REQUIREMENTS that are not installed, or not in a suitable version."""
        from packaging.requirements import Requirement

        missing = []
        for text in PYTHON_REQUIREMENTS:
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

        Raises DependencyError when something is missing and was not installed.
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
        try:
            import slicer.packaging as slicerPackaging  # Slicer 5.12+
        except ImportError:
            slicerPackaging = None
        if slicerPackaging is not None:
            try:
                slicerPackaging.pip_ensure(missing, prompt_install=askConfirmation, requester="AbdoSeg", skip_in_testing=False)
            except RuntimeError as error:  # the user declined
                raise DependencyError(_("AbdoSeg cannot run without these Python packages: {packages}").format(packages=", ".join(missing))) from error
            return
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("AbdoSeg needs these Python packages. Installing them needs a network connection and may take a few minutes."),
            _("AbdoSeg - install Python packages"),
            detailedText="\n".join(missing),
        ):
            raise DependencyError(_("AbdoSeg cannot run without these Python packages: {packages}").format(packages=", ".join(missing)))
        slicer.util.pip_install(missing)

    @staticmethod
    def cudaAvailable() -> bool:
        """True when PyTorch (in Slicer's Python) finds a CUDA GPU."""
        import torch

        return bool(torch.cuda.is_available())

    # Segmentation ------------------------------------------------------------------------

    def isRunning(self) -> bool:
        return self.process is not None and not self.process.finished

    def segmentationCommand(self, inputFile: str, outputDir: str, modelPath, device: str) -> list[str]:
        """The ``abdoseg segment`` command line, run by Slicer's Python (PythonSlicer)."""
        pythonSlicer = shutil.which("PythonSlicer")
        if not pythonSlicer:
            raise RuntimeError(_("PythonSlicer, Slicer's Python interpreter, was not found."))
        return [
            pythonSlicer, "-m", "AbdoSegLib.cli", "segment", str(inputFile),
            "-o", str(outputDir), "--progress", "json", "--device", device, "--model", str(modelPath),
        ]

    def startSegmentation(
        self,
        inputVolume,
        outputSegmentation,
        modelPath=DEFAULT_BUNDLE,
        device: str = "auto",
        smoothingFactor: float = 0.5,
        progressCallback: Callable | None = None,
        logCallback: Callable | None = None,
        completedCallback: Callable | None = None,
    ) -> SegmentationProcess:
        """Start segmenting ``inputVolume`` into ``outputSegmentation``; returns at once.

        The volume is written to a temporary NRRD file, ``abdoseg segment`` runs on it in a
        separate process, and when it ends the labels are imported into ``outputSegmentation``
        (AbdoSegLib.scene), closed surfaces are built with ``smoothingFactor`` and
        ``completedCallback(SegmentationResult)`` is called.
        """
        from AbdoSegLib import scene

        if self.isRunning():
            raise RuntimeError(_("A segmentation is already running."))
        if inputVolume is None or inputVolume.GetImageData() is None:
            raise ValueError(_("Select an input volume that holds an image."))
        if outputSegmentation is None:
            raise ValueError(_("Select an output segmentation."))
        if not pathlib.Path(modelPath).is_file():
            raise ValueError(_("The model file {path} does not exist.").format(path=modelPath))

        tempDir = slicer.util.tempDirectory("AbdoSeg")
        inputFile = os.path.join(tempDir, "input.nrrd")
        outputDir = os.path.join(tempDir, "output")
        scene.write_volume(inputVolume, inputFile)
        command = self.segmentationCommand(inputFile, outputDir, modelPath, device)
        startTime = time.monotonic()

        def finished(process: SegmentationProcess) -> None:
            result = self._finishSegmentation(process, inputVolume, outputSegmentation, outputDir, smoothingFactor, startTime)
            if not self.keepTemporaryFiles:
                shutil.rmtree(tempDir, ignore_errors=True)
            self.lastResult = result
            if completedCallback:
                completedCallback(result)

        self.process = SegmentationProcess(command, self.moduleDir, progressCallback, logCallback, finished)
        self.process.start()
        return self.process

    def segment(self, inputVolume, outputSegmentation, modelPath=DEFAULT_BUNDLE, device="auto", smoothingFactor=0.5, timeoutSeconds=None):
        """Segment and wait for the result (scripts, tests): returns a SegmentationResult."""
        process = self.startSegmentation(inputVolume, outputSegmentation, modelPath, device, smoothingFactor)
        process.wait(timeoutSeconds)
        return self.lastResult

    def cancel(self) -> None:
        if self.isRunning():
            self.process.cancel()

    def _finishSegmentation(self, process, inputVolume, outputSegmentation, outputDir, smoothingFactor, startTime) -> SegmentationResult:
        from AbdoSegLib import scene
        from AbdoSegLib.io.image_files import read_image

        if process.cancelled:
            return SegmentationResult("cancelled", _("Cancelled."), log=process.logLines)
        if process.returnCode != 0:
            return SegmentationResult("failed", process.errorMessage(), log=process.logLines)
        try:
            labels = read_image(os.path.join(outputDir, LABELS_FILE))
            with open(os.path.join(outputDir, SUMMARY_FILE), encoding="utf-8") as file:
                summary = json.load(file)
            scene.segmentation_from_labelmap(labels, inputVolume, segmentation_node=outputSegmentation)
            scene.create_closed_surfaces(outputSegmentation, smoothingFactor)
            self.showSegmentation(outputSegmentation)
            warnings = self.qualityWarnings(summary, labels, inputVolume)
        except Exception as error:  # noqa: BLE001 - any import problem is reported as the run's failure
            logging.exception("AbdoSeg: importing the results failed")
            return SegmentationResult("failed", _("the results could not be imported: {error}").format(error=error), log=process.logLines)
        seconds = time.monotonic() - startTime
        message = _("Done in {seconds:.0f} s on {device}.").format(seconds=seconds, device=summary.get("device", "?"))
        return SegmentationResult("completed", message, outputSegmentation, summary, warnings, process.logLines)

    @staticmethod
    def qualityWarnings(summary: dict, labels, inputVolume) -> list[str]:
        """QA warnings: from summary.json when the command wrote them, else from AbdoSegLib.analysis.qa."""
        if isinstance(summary.get("qa"), dict) and "warnings" in summary["qa"]:
            return list(summary["qa"]["warnings"])
        from AbdoSegLib import scene
        from AbdoSegLib.analysis.qa import qa_report

        return list(qa_report(labels, scene.image_from_volume(inputVolume))["warnings"])

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

    def exportSurfaces(self, segmentationNode, folder, fmt="STL", lps=True, merge=False, smoothingFactor=None):
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
    """Self-test: segment the sample CT, compare with the bundled reference, export surfaces, cancel a run."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_AbdoSegSample()
        self.setUp()
        self.test_AbdoSegCancel()

    def _loadSample(self):
        import SampleData

        registerSampleData()
        volume = SampleData.downloadSample(SAMPLE_NAME)
        self.assertIsNotNone(volume)
        return volume

    def test_AbdoSegSample(self):
        from AbdoSegLib import scene

        self.delayDisplay("Loading the sample CT")
        inputVolume = self._loadSample()
        logic = AbdoSegLogic()
        logic.setupPythonRequirements(askConfirmation=False)

        self.delayDisplay("Segmenting (a few minutes on a CPU)")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "AbdoSeg test")
        result = logic.segment(inputVolume, segmentation, device="auto", timeoutSeconds=1800)
        self.assertEqual(result.status, "completed", result.message)
        titles = [segmentation.GetSegmentation().GetSegment(i).GetName() for i in segmentation.GetSegmentation().GetSegmentIDs()]
        self.assertEqual(titles, [organ.title for organ in ORGANS])
        closedSurface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
        self.assertTrue(segmentation.GetSegmentation().ContainsRepresentation(closedSurface))

        self.delayDisplay("Comparing with the bundled reference")
        reference = scene.segmentation_from_labelmap(SAMPLE_REFERENCE, inputVolume, name="AbdoSeg reference")
        table, metrics = logic.compareSegmentations(segmentation, reference)
        self.assertEqual(table.GetNumberOfRows(), len(ORGANS))
        self.assertGreater(metrics["liver"]["dice"], 0.8)
        for organ in ORGANS:
            self.assertEqual(metrics[organ.name]["status"], "compared", organ.name)

        self.delayDisplay("Exporting STL surfaces")
        folder = slicer.util.tempDirectory("AbdoSegTestExport")
        files = logic.exportSurfaces(segmentation, folder, "STL", lps=True)
        self.assertEqual(len(files), len(ORGANS))
        bounds = [0.0] * 6
        inputVolume.GetRASBounds(bounds)
        lpsLow = [-bounds[1], -bounds[3], bounds[4]]
        lpsHigh = [-bounds[0], -bounds[2], bounds[5]]
        for path in files:
            reader = vtk.vtkSTLReader()
            reader.SetFileName(str(path))
            reader.Update()
            mesh = reader.GetOutput()
            self.assertGreater(mesh.GetNumberOfPoints(), 100, str(path))
            meshBounds = mesh.GetBounds()
            for axis in range(3):
                self.assertGreaterEqual(meshBounds[2 * axis], lpsLow[axis] - 1.0)
                self.assertLessEqual(meshBounds[2 * axis + 1], lpsHigh[axis] + 1.0)
        shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")

    def test_AbdoSegCancel(self):
        inputVolume = self._loadSample()
        logic = AbdoSegLogic()
        logic.setupPythonRequirements(askConfirmation=False)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "AbdoSeg cancelled")
        process = logic.startSegmentation(inputVolume, segmentation, device="cpu")
        self.assertTrue(logic.isRunning())
        import psutil

        launcher = psutil.Process(process.proc.pid)
        for _attempt in range(600):  # until the launcher has started Python (or has ended)
            if launcher.children(recursive=True) or not launcher.is_running():
                break
            time.sleep(0.1)
        tree = [launcher] + launcher.children(recursive=True)
        logic.cancel()
        process.wait(timeoutSeconds=60)
        self.assertEqual(logic.lastResult.status, "cancelled")
        self.assertFalse(logic.isRunning())
        gone, alive = psutil.wait_procs(tree, timeout=10)
        self.assertEqual(alive, [])
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 0)
        self.delayDisplay("Cancel test passed")
