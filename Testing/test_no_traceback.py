"""No traceback anywhere a user can reach: every case ends in one sentence (or quietly) with its exit code.

The tests run as root here and in CI, where chmod does not stop root: unwritable targets are
provoked with paths that no user can write to, whatever their rights (a path under a file, a
folder where a file is to go, /dev/full for a full disk).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from AbdoSegLib.cli import BROKEN_PIPE, INTERRUPTED, main, run_cli
from AbdoSegLib.resources import SAMPLE_REFERENCE
from conftest import interruptible

ABDOSEG = [sys.executable, "-m", "AbdoSegLib.cli"]
ENV = dict(os.environ, OMP_NUM_THREADS="2")


def one_sentence(stderr: str, *phrases: str) -> str:
    """The one non-empty line of ``stderr``, which holds ``phrases`` and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def refused(code: int, capsys, *phrases: str) -> str:
    assert code == 1
    return one_sentence(capsys.readouterr().err, "abdoseg: error: ", *phrases)


# -- the top-level handler ---------------------------------------------------------------------


def test_a_closed_pipe_ends_quietly_with_141(tiny_bundle_path):
    # A pipe whose reader is gone before the first write: what `abdoseg info | head -0` meets.
    reader, writer = os.pipe()
    os.close(reader)
    with subprocess.Popen([*ABDOSEG, "info", str(tiny_bundle_path)], stdout=writer, stderr=subprocess.PIPE, text=True, env=ENV) as child:
        os.close(writer)
        _, stderr = child.communicate(timeout=120)
    assert child.returncode == BROKEN_PIPE == 141
    assert stderr == ""


def test_compare_writes_its_files_before_a_closed_pipe_ends_it(tmp_path):
    reader, writer = os.pipe()
    os.close(reader)
    out = tmp_path / "metrics.json"
    command = [*ABDOSEG, "compare", str(SAMPLE_REFERENCE), str(SAMPLE_REFERENCE), "--json", str(out)]
    with subprocess.Popen(command, stdout=writer, stderr=subprocess.PIPE, text=True, env=ENV) as child:
        os.close(writer)
        _, stderr = child.communicate(timeout=300)
    assert (child.returncode, stderr) == (BROKEN_PIPE, "")
    assert '"dice": 1.0' in out.read_text()


def test_a_full_disk_is_one_sentence(tiny_bundle_path):
    with open("/dev/full", "w") as full:  # every write fails with ENOSPC
        result = subprocess.run([*ABDOSEG, "info", str(tiny_bundle_path)], stdout=full, stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)
    assert result.returncode == 1
    one_sentence(result.stderr, "abdoseg: error: ", "the disk is full")


@pytest.mark.parametrize("command, program", [
    ([*ABDOSEG, "info"], "abdoseg"),
    ([sys.executable, "-m", "abdoseg_train.cli", "evaluate", "absent.safetensors", "absent"], "abdoseg-train"),
], ids=["abdoseg", "abdoseg-train"])
def test_ctrl_c_while_the_modules_import_is_one_line(command, program):
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=interruptible)
    maps = Path(f"/proc/{child.pid}/maps")
    # Interrupt once torch's library is mapped: the child is then inside `import torch`, which
    # takes seconds more. Bounded polling: at most 20000 looks, then the test fails below.
    for _ in range(20000):
        if child.poll() is not None or "libtorch" in maps.read_text():
            break
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == INTERRUPTED, stderr
    assert stdout == ""
    one_sentence(stderr, f"{program}: interrupted")


def _parser_raising(error: BaseException) -> argparse.ArgumentParser:
    """A parser whose one command raises ``error``: the handler's answer to what a command may meet."""
    parser = argparse.ArgumentParser(prog="abdoseg")
    command = parser.add_subparsers(required=True).add_parser("run")

    def run(args: argparse.Namespace) -> None:
        raise error

    command.set_defaults(run=run)
    return parser


@pytest.mark.parametrize(
    "error, phrases",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/out/labels.nii.gz"), ("/data/out/labels.nii.gz", "the disk is full")),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/cd/out.json"), ("/mnt/cd/out.json", "read-only")),
        (PermissionError(errno.EACCES, "Permission denied", "/srv/.out.json.tmp", None, "/srv/out.json"), ("/srv/out.json", "permission denied")),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp/results"), ("/tmp/results", "it is a folder")),
        (MemoryError(), ("not enough memory",)),
    ],
)
def test_os_and_memory_errors_are_one_sentence_naming_the_path(capsys, error, phrases):
    refused(run_cli(_parser_raising(error), ["run"]), capsys, *phrases)


def test_ctrl_c_during_a_command_is_130(capsys):
    assert run_cli(_parser_raising(KeyboardInterrupt()), ["run"]) == INTERRUPTED
    one_sentence(capsys.readouterr().err, "abdoseg: interrupted")


# -- output targets --------------------------------------------------------------------------


def compare(*args) -> int:
    return main(["compare", str(SAMPLE_REFERENCE), str(SAMPLE_REFERENCE), *[str(a) for a in args]])


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_compare_json_naming_a_folder_is_refused(tmp_path, capsys, force):
    folder = tmp_path / "metrics.json"
    folder.mkdir()
    (folder / "mine.txt").write_text("kept")
    refused(compare("--json", folder, *force), capsys, str(folder), "is a folder")
    assert [p.name for p in folder.iterdir()] == ["mine.txt"]


def test_compare_output_under_a_file_is_refused(tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("kept")
    refused(compare("--csv", blocker / "x.csv"), capsys, str(blocker), "is a file, not a folder")
    assert blocker.read_text() == "kept"


def test_export_into_a_file_or_under_one_is_refused(tmp_path, capsys):
    blocker = tmp_path / "surfaces"
    blocker.write_text("kept")
    refused(main(["export", str(SAMPLE_REFERENCE), "-o", str(blocker), "--force"]), capsys, str(blocker))
    refused(main(["export", str(SAMPLE_REFERENCE), "-o", str(blocker / "out")]), capsys, str(blocker))
    assert blocker.read_text() == "kept"


def test_info_of_a_folder_is_refused(tmp_path, capsys):
    refused(main(["info", str(tmp_path)]), capsys, str(tmp_path))


# -- image inputs --------------------------------------------------------------------------


def _ct(shape=(40, 40, 20)) -> np.ndarray:
    """Air with a soft-tissue block: passes the HU check, so the geometry decides."""
    array = np.full(shape, -1000, np.int16)
    array[tuple(slice(n // 4, 3 * n // 4) for n in shape)] = 40
    return array


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    image = nib.Nifti1Image(array, None)
    image.set_sform(affine, code=1)  # no qform: nibabel cannot write one from a singular affine
    image.header.set_zooms(np.linalg.norm(affine[:3, :3], axis=0))  # ITK (and Slicer) take the voxel size from pixdim
    nib.save(image, str(path))
    return path


def patched_header(path: Path, offset: int, value: np.generic) -> Path:
    """``path`` (an uncompressed .nii) with ``value`` written at byte ``offset`` of its header."""
    data = bytearray(path.read_bytes())
    data[offset:offset + value.nbytes] = value.tobytes()
    path.write_bytes(bytes(data))
    return path


SPACING = np.diag([1.5, 1.5, 3.0, 1.0])


def _bad_input(case: str, folder: Path) -> Path:
    if case == "bool":  # NIfTI datatype 1 (DT_BINARY) with 1 bit per voxel
        path = _save(folder / "ct.nii", _ct().astype(np.uint8), SPACING)
        patched_header(path, 70, np.int16(1))
        return patched_header(path, 72, np.int16(1))
    if case == "complex":
        return _save(folder / "ct.nii.gz", _ct().astype(np.complex64), SPACING)
    if case == "singular":
        return _save(folder / "ct.nii.gz", _ct(), np.diag([1.5, 0.0, 3.0, 1.0]))
    if case == "nan_affine":
        return patched_header(_save(folder / "ct.nii", _ct(), SPACING), 280, np.float32(np.nan))  # srow_x[0]
    if case == "huge_header":  # 32767^3 voxels claimed, 8 present
        path = _save(folder / "ct.nii", _ct((2, 2, 2)), SPACING)
        for axis in range(3):
            patched_header(path, 42 + 2 * axis, np.int16(32767))  # dim[1..3]
        return path
    if case == "huge_nrrd":
        path = folder / "ct.nhdr"
        path.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 32767 32767 32767\nspacings: 1 1 1\n"
                        "encoding: raw\nendian: little\ndata file: ct.raw\n\n")
        (folder / "ct.raw").write_bytes(b"")  # present (ITK checks), empty: only the header is read
        return path
    if case == "micrometres":
        return _save(folder / "ct.nii.gz", _ct(), np.diag([0.1, 0.1, 0.1, 1.0]))
    if case == "metres":
        return _save(folder / "ct.nii.gz", _ct(), np.diag([1000.0, 1000.0, 3000.0, 1.0]))
    if case == "two_voxels":
        return _save(folder / "ct.nii.gz", _ct((2, 2, 2)), SPACING)
    if case == "small_cube":  # 45 mm each way: the V-Net's deepest stage would have 1 voxel
        return _save(folder / "ct.nii.gz", _ct((30, 30, 15)), SPACING)
    if case == "too_large_a_field":  # 10 mm voxels, 3 m across: a model grid of billions of voxels
        return _save(folder / "ct.nii.gz", _ct((300, 300, 40)), np.diag([10.0, 10.0, 10.0, 1.0]))
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, phrases",
    [
        ("bool", ("unusable NIfTI header", "data code 1 not supported")),
        ("complex", ("complex64 voxels", "integer or real")),
        ("singular", ("singular voxel-to-world", "1.5 x 0 x 3 mm")),
        ("nan_affine", ("NaN or infinite values in its voxel-to-world",)),
        ("huge_header", ("32767x32767x32767 voxels", "crop or downsample")),
        ("huge_nrrd", ("32767x32767x32767 voxels",)),
        ("micrometres", ("0.1 x 0.1 x 0.1 mm", "40 x 40 x 20 grid", "0.3 to 10 mm in-plane")),
        ("metres", ("1000 x 1000 x 3000 mm", "0.3 to 12 mm between slices")),
        ("two_voxels", ("covers only 3 x 3 x 6 mm", "2 x 2 x 2 grid", "at least 30 mm along each axis")),
        ("small_cube", ("covers only 45 x 45 x 45 mm", "100 mm along one")),
        ("too_large_a_field", ("covers 3000 x 3000 x 400 mm", "more than a body")),
    ],
)
def test_bad_image_is_one_sentence_and_nothing_is_written(tmp_path, capsys, tiny_bundle_path, case, phrases):
    ct = _bad_input(case, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    refused(main(["segment", str(ct), "-o", str(out), "--model", str(tiny_bundle_path)]), capsys, str(ct), *phrases)
    assert sorted(p.name for p in tmp_path.iterdir()) == before



def test_a_truncated_metaimage_is_one_line_even_on_the_native_stderr(tmp_path, capfd, tiny_bundle_path):
    """MetaIO prints "data not read completely" on the process's stderr (C++), past Python: it must not reach the user."""
    import SimpleITK as sitk

    whole = tmp_path / "whole.mha"
    sitk.WriteImage(sitk.GetImageFromArray(_ct()), str(whole), useCompression=False)
    data = whole.read_bytes()
    cut = tmp_path / "ct.mha"
    cut.write_bytes(data[: len(data) - 4000])
    before = sorted((path.name, path.read_bytes()) for path in tmp_path.iterdir())
    assert main(["segment", str(cut), "-o", str(tmp_path / "out"), "--model", str(tiny_bundle_path)]) == 1
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("abdoseg: error: ") and str(cut) in lines[0] and "truncated" in lines[0], lines
    assert sorted((path.name, path.read_bytes()) for path in tmp_path.iterdir()) == before
