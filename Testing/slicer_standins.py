"""Stand-ins, not Slicer: the few parts of the 3D Slicer application that AbdoSeg.py needs and ``slicer-core`` lacks.

``slicer-core`` (PyPI) gives the real MRML scene, segmentation logic and ``slicer.util``. The application's Qt
layer (``qt``, ``slicer.app``) and its Python helpers (``slicer.i18n``, ``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper``) are not in it. Each stand-in here does only what AbdoSeg's logic and
self-test use, and raises AttributeError for anything else: a new use of the application shows up here
instead of passing unnoticed. The widget's Qt part (``setup()``: the .ui file loaded, the parameter node's GUI
connections) is not rehearsed; its Apply button is, on ``ui_widgets`` (attribute holders named as in the .ui file).

``STANDIN_MODULES`` are put into ``sys.modules`` and an ``Application`` becomes ``slicer.app`` before
``AbdoSeg.py`` is imported (Testing/test_slicer_rehearsal.py); ``python_slicer`` writes a stand-in for the
``PythonSlicer`` launcher.
"""

from __future__ import annotations

import os
import sys
import types
import unittest
import weakref
from pathlib import Path
from xml.etree import ElementTree


def _module(name: str, **attributes) -> types.ModuleType:
    """A module holding ``attributes`` only: any other attribute raises AttributeError, naming the stand-in."""
    module = types.ModuleType(name, f"Stand-in, not Slicer: {name} with {', '.join(sorted(attributes))} only.")
    module.__dict__.update(attributes)

    def missing(attribute: str):
        raise AttributeError(f"{name}.{attribute} is used, but the rehearsal's stand-in {name} has only {sorted(attributes)}")

    module.__getattr__ = missing
    return module


class _StandIn:
    """Refuses attributes it does not define (``__slots__``), naming the stand-in."""

    __slots__ = ()

    def __getattr__(self, attribute: str):
        raise AttributeError(f"{type(self).__name__}.{attribute} is used, but the rehearsal's stand-in does not have it")


# qt ---------------------------------------------------------------------------------------------

_started_timers: weakref.WeakSet[QTimer] = weakref.WeakSet()


class QTimer(_StandIn):
    """qt.QTimer: ``setInterval``, ``connect("timeout()", slot)``, ``start``, ``stop``.

    A started timer's slots run on each ``Application.processEvents()``, as Qt's event loop runs them once the
    interval has passed (the interval is not waited for: the rehearsal calls processEvents in its own loop).
    """

    __slots__ = ("__weakref__", "interval_ms", "slots")

    def __init__(self) -> None:
        self.interval_ms = 0
        self.slots = []

    def setInterval(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms

    def connect(self, signal: str, slot) -> None:
        if signal != "timeout()":
            raise AttributeError(f"the stand-in QTimer has only the timeout() signal, not {signal}")
        self.slots.append(slot)

    def start(self) -> None:
        _started_timers.add(self)

    def stop(self) -> None:
        _started_timers.discard(self)


# slicer.app -------------------------------------------------------------------------------------


class ProcessEnvironment(_StandIn):
    """qt.QProcessEnvironment as ``slicer.util.startupEnvironment`` reads it: ``keys()`` and ``value(key)``."""

    __slots__ = ("variables",)

    def __init__(self, variables: dict[str, str]) -> None:
        self.variables = dict(variables)

    def keys(self) -> list[str]:
        return list(self.variables)

    def value(self, key: str) -> str:
        return self.variables[key]


class Application(_StandIn):
    """slicer.app: ``applicationName``, ``temporaryPath``, ``processEvents()``, ``startupEnvironment()``, no views
    (``layoutManager()`` is None), and testing mode (``testingEnabled()``, as ``Slicer --testing`` runs a ctest:
    message boxes are logged, not shown), where the wait cursor changes nothing."""

    __slots__ = ("temporaryPath",)
    applicationName = "Slicer"

    def __init__(self, temporary_path: str | Path) -> None:
        self.temporaryPath = str(temporary_path)

    def processEvents(self) -> None:
        """Run the slots of every started QTimer once."""
        for timer in list(_started_timers):
            for slot in list(timer.slots):
                if timer in _started_timers:  # a slot may stop its own timer
                    slot()

    def startupEnvironment(self) -> ProcessEnvironment:
        """The environment Slicer was started with: here, this process's."""
        return ProcessEnvironment(os.environ)

    def layoutManager(self):
        return None

    def testingEnabled(self) -> bool:
        return True

    def setOverrideCursor(self, cursor) -> None:
        pass

    def restoreOverrideCursor(self) -> None:
        pass


# slicer.i18n, slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper ------------------------


def tr(text: str) -> str:
    return text


def translate(context: str, text: str) -> str:
    return text


class ScriptedLoadableModule:
    """Base class of the module's metadata class (never built in the rehearsal)."""


class ScriptedLoadableModuleWidget:
    """Base class of the module's widget; its ``setup()`` (Qt widgets from the .ui file) is not rehearsed: see ``ui_widgets``."""

    def __init__(self, parent=None) -> None:
        pass


class ScriptedLoadableModuleLogic:
    """Base class of the module's logic; its parameter node is not rehearsed."""

    def __init__(self, parent=None) -> None:
        pass


class ScriptedLoadableModuleTest(unittest.TestCase):
    """Base class of the module's self-test: a unittest.TestCase whose ``delayDisplay`` prints (Slicer also shows it)."""

    def delayDisplay(self, message: str, requestedDelay=None, msec=None) -> None:
        print(message, flush=True)


def parameterNodeWrapper(cls):
    """The class as it is: the rehearsal does not build the module's parameter node."""
    return cls


def WithinRange(minimum: float, maximum: float):
    return (minimum, maximum)


STANDIN_MODULES = {
    # Qt's enum values, for slicer.util.tryWithErrorDisplay and errorDisplay.
    "qt": _module("qt", QTimer=QTimer, Qt=_module("qt.Qt", WaitCursor=3), QMessageBox=_module("qt.QMessageBox", Ok=0x400, Critical=3)),
    "slicer.i18n": _module("slicer.i18n", tr=tr, translate=translate),
    "slicer.ScriptedLoadableModule": _module(
        "slicer.ScriptedLoadableModule",
        ScriptedLoadableModule=ScriptedLoadableModule,
        ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest=ScriptedLoadableModuleTest,
    ),
    "slicer.parameterNodeWrapper": _module("slicer.parameterNodeWrapper", parameterNodeWrapper=parameterNodeWrapper, WithinRange=WithinRange),
}
"""sys.modules entries that AbdoSeg.py imports and slicer-core does not have."""


# The module panel's widgets -------------------------------------------------------------------------


class Widget(_StandIn):
    """A Qt widget of the module panel, as the widget code uses it: properties it sets, and what it calls."""

    __slots__ = ("text", "toolTip", "enabled", "value", "visible", "lines")

    def __init__(self) -> None:
        self.text, self.toolTip, self.enabled, self.value, self.visible, self.lines = "", "", True, 0, True, []

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def clear(self) -> None:
        self.lines = []

    def appendPlainText(self, line: str) -> None:
        self.lines.append(line)


def ui_widgets(ui_file: Path) -> types.SimpleNamespace:
    """``self.ui`` as ``slicer.util.childWidgetVariables`` makes it: one attribute per named widget of the .ui file."""
    return types.SimpleNamespace(**{element.get("name"): Widget() for element in ElementTree.parse(ui_file).iter("widget")})


# PythonSlicer -----------------------------------------------------------------------------------


def python_slicer(folder: Path, python: str = sys.executable) -> Path:
    """Write ``folder/PythonSlicer``: like Slicer's launcher, a process that runs ``python`` as its child with the arguments."""
    path = folder / "PythonSlicer"
    path.write_text(f'#!/bin/sh\n# Stand-in, not Slicer: a launcher that runs Python as its child.\n"{python}" "$@"\n')
    path.chmod(0o755)
    return path
