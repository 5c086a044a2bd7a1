"""``abdoseg info [BUNDLE]``: print a model bundle's metadata."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..model.bundle import read_metadata
from ..resources import DEFAULT_BUNDLE


def register(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser("info", help="print a model bundle's metadata")
    info.add_argument("model", type=Path, nargs="?", default=DEFAULT_BUNDLE, help="model bundle (default: the bundled model)")
    info.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> None:
    print(json.dumps(read_metadata(args.model), indent=2))
