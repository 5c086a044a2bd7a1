"""Outputs are never half-written: write under a temporary name, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import AbdoSegError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create owner-only entries; give the result the mode a plain open/mkdir would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` (same suffixes); rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    handle, temporary = tempfile.mkstemp(prefix=f".{stem}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        _usual_mode(temporary, directory=False)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; it becomes ``path`` when the block succeeds.

    An existing ``path`` is refused unless ``overwrite``; it is then replaced only after the
    new content is complete. On an exception the staging folder is removed.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise AbdoSegError(f"{path} already exists; choose another output folder or pass --force to replace it.")
    if path.exists() and not path.is_dir():
        raise AbdoSegError(f"{path} exists and is not a folder.")
    parent = path.parent
    if not parent.is_dir():
        raise AbdoSegError(f"cannot write {path}: its parent folder {parent} does not exist.")
    if not os.access(parent, os.W_OK):
        raise AbdoSegError(f"cannot write {path}: the folder {parent} is not writable.")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=parent))
    except OSError as error:
        raise AbdoSegError(f"cannot create the output folder {path} in {parent} ({error.strerror}).") from None
    try:
        yield staging
        _usual_mode(staging, directory=True)
        if path.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent))
            os.replace(path, retired / path.name)
            os.replace(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
