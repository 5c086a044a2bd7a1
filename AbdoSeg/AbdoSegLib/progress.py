"""Progress reporting: a bar on a terminal, or one JSON object per line for the Slicer module.

The stages are named in ``outputs``; ``process`` reads the JSON lines on the Slicer module's side.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

Progress = Callable[[str, float, str], None]
"""progress(stage, fraction 0..1, message)"""


class JsonLines:
    """Writes one JSON object per line to ``stream``, flushed; if the reader goes away (a closed pipe),
    writing stops and the work goes on."""

    def __init__(self, stream: TextIO = sys.stdout):
        self.stream: TextIO | None = stream

    def write(self, record: dict) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            self.stream = None


class JsonProgress(JsonLines):
    """Prints {"stage", "fraction", "message"} as one JSON line per update (``JsonLines``)."""

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        self.write({"stage": stage, "fraction": round(fraction, 4), "message": message})

    def close(self) -> None:
        """Nothing to release (a line is complete when written)."""


class BarProgress:
    """A tqdm bar per stage on stderr."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.stage = ""

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=100, desc=f"{stage:<11}", bar_format="{desc} {bar} {percentage:3.0f}% {postfix}", file=sys.stderr)
        self.bar.n = round(100 * fraction)
        self.bar.set_postfix_str(message, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class NoProgress:
    """Reports nothing."""

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        pass

    def close(self) -> None:
        pass


def make_progress(mode: str) -> JsonProgress | BarProgress | NoProgress:
    """'json', 'bar', 'none', or 'auto' (a bar when stderr is a terminal, else nothing)."""
    if mode == "json":
        return JsonProgress()
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        return BarProgress()
    return NoProgress()
