"""Outputs are never half-written nor lost: write under a temporary name, then rename.

An output folder is written by one run at a time (a lock file beside it holds the run's process id),
staged in a hidden ``.NAME.partial-PID-*`` folder that a later run removes if that process died, and
``--force`` replaces only a folder that the caller recognises as its own output.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..errors import AbdoSegError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create owner-only entries; give the result the mode a plain open/mkdir would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` (same suffixes); rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    # Named before it is created (not mkstemp, which names it only once it exists): a Ctrl-C that lands
    # between the two would otherwise leave the file behind.
    temporary = path.parent / f".{stem}.{os.getpid()}-{secrets.token_hex(6)}{suffix}"
    try:
        os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        yield temporary
        _usual_mode(temporary, directory=False)  # safetensors writes a new, owner-only file in its place
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a timeout, a closed terminal, a Cancel) raises KeyboardInterrupt as Ctrl-C
    does, so that what the block stages is removed; outside the main thread, which alone may set handlers, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


@contextlib.contextmanager
def _lock(path: Path, shown: Path) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``path`` (it holds this process's id) while the block runs; a lock
    whose process no longer exists is taken over with a note."""
    lock = path.parent / f".{path.name}.lock"
    for _attempt in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = lock.read_text(errors="replace").strip() if lock.is_file() else ""
            if not owner.isdigit() or _alive(int(owner)):  # no pid yet: its run has just started
                raise AbdoSegError(
                    f"{shown} is being written by another AbdoSeg run (lock {lock}, process {owner or 'unknown'}); "
                    f"wait for it to finish, or delete the lock if no run is writing there."
                ) from None
            _note(f"{lock} was left by a run that has ended (process {owner}); taking it over.")
            lock.unlink(missing_ok=True)
            continue
        except OSError as error:
            raise AbdoSegError(f"cannot write {shown}: the lock {lock} cannot be created ({error.strerror}).") from None
        with os.fdopen(handle, "w") as file:
            file.write(f"{os.getpid()}\n")
        break
    else:
        raise AbdoSegError(f"{shown} is being written by another AbdoSeg run (lock {lock}); wait for it to finish.")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _remove_stale_partials(path: Path) -> None:
    """Remove the staging folders ``.NAME.partial-PID-*`` of runs that were killed (their process is gone)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.partial-(\d+)-[^/]*")
    for stale in path.parent.glob(f".{glob.escape(path.name)}.partial-*"):
        match = pattern.fullmatch(stale.name)
        if match and stale.is_dir() and not _alive(int(match[1])):
            shutil.rmtree(stale, ignore_errors=True)
            _note(f"removed {stale}, left by a run that was killed.")


def _check_replaceable(path: Path, shown: Path, foreign: Callable[[Path], str | None] | None, keep: Iterable[Path]) -> None:
    """Refuse to replace a folder that holds the current folder, one of ``keep``, or what ``foreign`` does not recognise."""
    real = path.resolve()
    reason = None
    if Path.cwd().resolve().is_relative_to(real):
        reason = "is the current folder or holds it"
    for kept in keep:
        if reason is None and Path(kept).resolve().is_relative_to(real):
            reason = f"holds the input {kept}"
    if reason is None and foreign is not None:
        try:
            reason = foreign(path)
        except OSError as error:
            reason = f"cannot be read ({error.strerror})"
    if reason:
        raise AbdoSegError(f"{shown} {reason}; --force replaces only an output folder that AbdoSeg wrote, so choose another output folder.")


def foreign_entries(folder: Path, is_ours: Callable[[Path], bool], program: str) -> str | None:
    """A phrase naming the entries of ``folder`` that ``program`` does not write (the first three), or None when
    ``is_ours`` accepts every entry: for the ``foreign`` test of ``atomic_directory``."""
    others = sorted(entry.name for entry in folder.iterdir() if not is_ours(entry))
    if not others:
        return None
    return f"holds files that {program} does not write ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"


def lacks_record(record: Path, key: str, program: str) -> str | None:
    """A phrase when ``record`` is not a JSON object with ``key`` (the mark of a folder ``program`` wrote), else None."""
    try:
        content = json.loads(record.read_text())
    except (OSError, ValueError):
        content = None
    if not isinstance(content, dict) or key not in content:
        return f"has no {record.name} written by {program}"
    return None


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False, foreign: Callable[[Path], str | None] | None = None,
                     keep: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; it becomes ``path`` when the block succeeds.

    An existing ``path`` is refused unless ``overwrite``; even then it is refused when it is or holds the
    current folder or one of ``keep`` (the inputs), or when ``foreign(path)`` says why it is not the caller's
    output (a phrase, None when it is). It is replaced only after the new content is complete. A second run on
    the same ``path`` is refused while this one holds the lock. On an exception the staging folder is removed.
    """
    shown = Path(path)
    path = Path(os.path.abspath(path))  # "." and "a/.." get a name and a parent
    parent = path.parent
    if not parent.is_dir():
        raise AbdoSegError(f"cannot write {shown}: its parent folder {parent} does not exist.")
    if not os.access(parent, os.W_OK):
        raise AbdoSegError(f"cannot write {shown}: the folder {parent} is not writable.")
    with _lock(path, shown):
        if path.exists() and not overwrite:
            raise AbdoSegError(f"{shown} already exists; choose another output folder or pass --force to replace it.")
        if path.exists() and not path.is_dir():
            raise AbdoSegError(f"{shown} exists and is not a folder.")
        if path.exists():
            _check_replaceable(path, shown, foreign, keep)
        _remove_stale_partials(path)
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-{os.getpid()}-", dir=parent))
        except OSError as error:
            raise AbdoSegError(f"cannot create the output folder {shown} in {parent} ({error.strerror}).") from None
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
