"""The ``abdoseg`` command line; each subcommand lives in ``commands/``.

    abdoseg segment CT -o OUTDIR [--model BUNDLE] [--device auto|cpu|cuda] [--progress ...]
                   [--surfaces stl|obj|ply|vtp [--lps|--ras] [--merge]] [--png] [--no-seg-nrrd] [--force]
    abdoseg compare PRED REF [--json OUT.json] [--csv OUT.csv] [--map MAPPING] [--png OUT.png --ct CT]
    abdoseg export LABELS -o DIR --format stl|obj|ply|vtp [--lps|--ras] [--merge]
    abdoseg info [BUNDLE]

Whatever a user can provoke ends in one sentence on stderr, never a traceback (``run_cli``):
exit code 1 for a problem with the input, an output, the disk or memory; 130 for Ctrl-C (even
while the heavy modules import: ``main`` imports the commands inside the handler); 141 when
stdout is a pipe that closed early (``abdoseg info | head -1``).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable

from . import __version__
from .errors import AbdoSegError

INTERRUPTED = 130
BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for any program that a closed pipe ends (``yes | head``),
so that ``set -o pipefail`` scripts see AbdoSeg as they see coreutils; the run did not finish
writing its output."""

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.EISDIR: "it is a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOENT: "no such file or folder",
}


def build_parser(commands: tuple) -> argparse.ArgumentParser:
    """The ``abdoseg`` parser with ``commands`` (modules with ``register(subparsers)``) as subcommands."""
    parser = argparse.ArgumentParser(prog="abdoseg", description="Segment the liver, kidneys and spleen in abdominal CT.")
    parser.add_argument("--version", action="version", version=f"abdoseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        command.register(subparsers)
    return parser


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, run the chosen subcommand's ``run(args)``; return the exit code (``run_guarded``)."""
    return run_guarded(parser.prog, lambda: _parse_and_run(parser, argv))


def _parse_and_run(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    args = parser.parse_args(argv)
    args.run(args)


def run_guarded(prog: str, work: Callable[[], None]) -> int:
    """Run ``work`` and flush stdout; a problem is one line ``PROG: ...`` on stderr, never a traceback.

    Returns 0; 1 for an AbdoSegError, an OSError (full disk, read-only or missing path, a folder
    where a file should be) or a MemoryError; 130 when interrupted; 141 when stdout closed early.
    """
    try:
        work()
        sys.stdout.flush()  # inside the handler: a closed pipe or a full disk shows here, not at exit
    except AbdoSegError as error:
        return _fail(prog, str(error))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output was left half-written.", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # As Python's documentation advises: point stdout at devnull so that the interpreter's
        # final flush does not raise again (and print "Exception ignored") on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except OSError as error:
        return _fail(prog, _describe_os_error(error))
    except MemoryError:
        return _fail(prog, "not enough memory to finish; close other programs or give a smaller volume (fewer voxels).")
    return 0


def _describe_os_error(error: OSError) -> str:
    """One sentence for an OSError: the path (the target of a rename) and the reason in words."""
    path = error.filename2 if error.filename2 is not None else error.filename
    reason = _REASONS.get(error.errno, (error.strerror or type(error).__name__).lower())
    if path is None:
        return f"cannot write the output: {reason}."
    return f"cannot write or read {os.fsdecode(path)}: {reason}."


def _fail(prog: str, sentence: str) -> int:
    print(f"{prog}: error: {sentence}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    def run() -> None:
        # Imported here, inside the handler: the commands load torch and VTK (seconds), and a
        # Ctrl-C meanwhile must end as quietly as one during the work.
        from .commands import ALL

        _parse_and_run(build_parser(ALL), argv)

    return run_guarded("abdoseg", run)


if __name__ == "__main__":
    sys.exit(main())
