"""The ``abdoseg`` command line; each subcommand lives in ``commands/``.

    abdoseg segment CT -o OUTDIR [--model BUNDLE] [--device auto|cpu|cuda] [--progress ...]
                   [--surfaces stl|obj|ply|vtp [--lps|--ras] [--merge]] [--png] [--no-seg-nrrd] [--force]
    abdoseg compare PRED REF [--json OUT.json] [--csv OUT.csv] [--map MAPPING] [--png OUT.png --ct CT]
    abdoseg export LABELS -o DIR --format stl|obj|ply|vtp [--lps|--ras] [--merge]
    abdoseg info [BUNDLE]

A problem with the input ends with one sentence on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .commands import ALL as COMMANDS
from .errors import AbdoSegError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abdoseg", description="Segment the liver, kidneys and spleen in abdominal CT.")
    parser.add_argument("--version", action="version", version=f"abdoseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, run the chosen subcommand's ``run(args)``; a user's problem is one line on stderr.

    Returns the exit code: 0, 1 for an AbdoSegError, 130 when interrupted.
    """
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except AbdoSegError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; no output was left half-written.", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
