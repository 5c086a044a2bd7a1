"""``abdoseg info [BUNDLE]``: check a model bundle (metadata and weights, as ``segment`` does) and print its metadata."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..model.bundle import load_bundle
from ..resources import DEFAULT_BUNDLE


def register(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser("info", help="print a model bundle's metadata")
    info.add_argument("model", type=Path, nargs="?", default=DEFAULT_BUNDLE, help="model bundle (default: the bundled model)")
    info.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> None:
    print(json.dumps(load_bundle(args.model).metadata, indent=2))
