"""A PNG to look at: CT slices with the organs over them, and the organ surfaces in 3D.

Layout (``PANEL`` pixels square each, a legend strip of ``LEGEND_HEIGHT`` below)::

    axial     | coronal
    sagittal  | 3D surfaces, seen from the front

Each slice is the one across its axis that shows most of every organ (see
``_slice_positions``), in the radiological convention that Slicer uses: axial with the
patient's right on the image's left and anterior up; coronal with the right on the left and
superior up; sagittal with anterior on the left and superior up. Each slice keeps the
proportions of its millimetres (voxel spacing), CT in an abdomen window (W400/L40). Labels are filled in their organ
colours at ``ALPHA`` opacity; a reference segmentation, when given, is drawn as outlines.

3D rendering is off-screen through EGL (VTK's ``vtkEGLRenderWindow``): no display is needed,
only libEGL and a Mesa driver on Linux (Debian: ``libegl1`` and ``libgl1-mesa-dri``).
"""

from __future__ import annotations

import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import vtkmodules.vtkRenderingOpenGL2  # noqa: E402,F401  (registers the OpenGL render window)
from PIL import Image as PILImage  # noqa: E402
from PIL import ImageDraw, ImageFont  # noqa: E402
from scipy import ndimage  # noqa: E402
from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402
from vtkmodules.vtkCommonCore import vtkLogger  # noqa: E402
from vtkmodules.vtkRenderingCore import (  # noqa: E402
    vtkActor,
    vtkPolyDataMapper,
    vtkRenderer,
    vtkRenderWindow,
    vtkWindowToImageFilter,
)

from ..errors import AbdoSegError  # noqa: E402
from ..image import Image  # noqa: E402
from ..io.atomic import atomic_path  # noqa: E402
from ..io.regrid import labels_onto_grid  # noqa: E402
from ..model.preprocessing import canonical  # noqa: E402
from ..organs import ORGANS  # noqa: E402
from .meshes import organ_boxes, organ_surfaces  # noqa: E402

PANEL = 400
"""Width and height of each of the four panels, in pixels."""

MARGIN = 20
"""Space around the picture inside each panel, for its title and the edge letters."""

LEGEND_HEIGHT = 40
SIZE = (2 * PANEL, 2 * PANEL + LEGEND_HEIGHT)
"""(width, height) of the picture in pixels."""

HU_WINDOW = (-160.0, 240.0)
"""Abdomen window W400/L40: HU shown from black to white."""

ALPHA = 0.45
"""Opacity of the organ colours over the CT."""

BACKGROUND = (0, 0, 0)
TEXT = (235, 235, 235)

# title, array axis fixed by the slice, (row axis, column axis) of the picture in canonical RAS
# voxel order, edge letters (top, bottom, left, right). Rows run from high to low index
# (S or A at the top), columns too (R, or A for sagittal, on the left).
_VIEWS = (
    ("Axial", 2, (1, 0), ("A", "P", "R", "L")),
    ("Coronal", 1, (2, 0), ("S", "I", "R", "L")),
    ("Sagittal", 0, (2, 1), ("S", "I", "A", "P")),
)


def render_preview(ct: Image, labels: Image, path: str | Path, reference: Image | None = None) -> Path:
    """Write the preview PNG of ``ct`` with ``labels`` (and ``reference`` outlines) to ``path``, atomically.

    ct: HU, any orientation; labels, reference: organ ids, resampled onto the CT grid
    (nearest neighbour) when they lie on another grid. Returns ``path``; the picture is
    ``SIZE`` pixels.
    """
    path = Path(path)
    labels = labels_onto_grid(labels, ct)
    ct_array, ct_affine, _ = canonical(ct)
    label_array = canonical(labels)[0]
    reference_array = canonical(labels_onto_grid(reference, ct))[0] if reference is not None else None
    spacing = np.linalg.norm(ct_affine[:3, :3], axis=0)
    position = _slice_positions(label_array)

    picture = PILImage.new("RGB", SIZE, BACKGROUND)
    corners = [(0, 0), (PANEL, 0), (0, PANEL)]
    for (title, axis, (row_axis, column_axis), letters), corner in zip(_VIEWS, corners):
        ct_slice, label_slice, reference_slice = (
            None if array is None else _oriented_slice(array, axis, position[axis], row_axis, column_axis)
            for array in (ct_array, label_array, reference_array)
        )
        panel = _slice_panel(ct_slice, label_slice, reference_slice, (spacing[row_axis], spacing[column_axis]))
        picture.paste(_framed(panel, title, letters), corner)
    picture.paste(_framed(_render_surfaces(labels), "3D (front view)", ("S", "I", "R", "L")), (PANEL, PANEL))
    _draw_legend(picture, reference is not None)
    with atomic_path(path) as temporary:
        picture.save(temporary, format="PNG")
    return path


def _slice_positions(labels: np.ndarray) -> tuple[int, int, int]:
    """For each axis of ``labels`` (canonical order), the slice across it that shows the organs best.

    Best: the largest sum, over the organs, of the organ's area in the slice divided by its
    largest area in any slice across that axis; so each organ counts alike, whatever its
    size, and a sliver counts little. (The slice through the organs' centre of mass can miss
    most of them: a sagittal one runs down the midline, between the liver and the spleen.)
    The volume's centre when there is no organ.
    """
    boxes = organ_boxes(labels)
    if not boxes:
        return tuple(n // 2 for n in labels.shape)
    scores = [np.zeros(n) for n in labels.shape]
    for organ, box in boxes.items():
        inside = labels[box] == organ.label
        for axis, score in enumerate(scores):
            area = inside.sum(axis=tuple(other for other in range(3) if other != axis))
            score[box[axis]] += area / area.max()
    return tuple(int(np.argmax(score)) for score in scores)


def _oriented_slice(array: np.ndarray, axis: int, position: int, row_axis: int, column_axis: int) -> np.ndarray:
    """The plane ``position`` across ``axis`` as a picture (rows, columns).

    Rows run along ``row_axis`` and columns along ``column_axis``, both from high to low index.
    """
    plane = np.take(array, position, axis=axis)
    remaining = [a for a in range(3) if a != axis]
    return plane.transpose(remaining.index(row_axis), remaining.index(column_axis))[::-1, ::-1]


def _slice_panel(ct: np.ndarray, labels: np.ndarray, reference: np.ndarray | None, pixel_mm: tuple[float, float]) -> np.ndarray:
    """One slice as RGB uint8 (h, w, 3), scaled to fit inside a panel's margins with square millimetres.

    ct, labels, reference: 2D arrays (rows, columns) of the same shape; pixel_mm: the
    (row, column) spacing in mm.
    """
    rows, columns = ct.shape
    scale = (PANEL - 2 * MARGIN) / max(rows * pixel_mm[0], columns * pixel_mm[1])
    size = (max(1, round(columns * pixel_mm[1] * scale)), max(1, round(rows * pixel_mm[0] * scale)))  # Pillow: (w, h)
    low, high = HU_WINDOW
    grey = np.clip((ct.astype(np.float32) - low) / (high - low), 0.0, 1.0) * 255.0
    grey = np.asarray(PILImage.fromarray(grey.astype(np.float32)).resize(size, PILImage.BILINEAR))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    labels = _resize_nearest(labels, size)
    for organ in ORGANS:
        inside = labels == organ.label
        rgb[inside] = (1.0 - ALPHA) * rgb[inside] + ALPHA * 255.0 * np.array(organ.color)
    if reference is not None:
        reference = _resize_nearest(reference, size)
        for organ in ORGANS:
            inside = reference == organ.label
            outline = inside & ~ndimage.binary_erosion(inside, iterations=2)
            rgb[outline] = 255.0 * (0.5 + 0.5 * np.array(organ.color))
    return np.round(rgb).astype(np.uint8)


def _resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Labels (rows, columns) resized to Pillow ``size`` (w, h), nearest neighbour."""
    return np.asarray(PILImage.fromarray(np.asarray(labels, dtype=np.uint8)).resize(size, PILImage.NEAREST))


def _render_surfaces(labels: Image) -> np.ndarray:
    """The organ surfaces rendered off-screen, seen from the front (anterior), superior up.

    Returns RGB uint8 (n, n, 3), n = PANEL - 2 MARGIN; the patient's right on the left, like the coronal slice.
    """
    renderer = vtkRenderer()
    renderer.SetBackground(*(c / 255 for c in BACKGROUND))
    for organ, mesh in organ_surfaces(labels, "ras").items():
        mapper = vtkPolyDataMapper()
        mapper.SetInputData(mesh)
        actor = vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*organ.color)
        actor.GetProperty().SetSpecular(0.2)
        actor.GetProperty().SetSpecularPower(20)
        renderer.AddActor(actor)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(0.0, 0.0, 0.0)
    camera.SetPosition(0.0, 1.0, 0.0)  # in front of the patient (RAS +y), looking back
    camera.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCamera()
    camera.Zoom(1.3)

    # Where EGL cannot start, VTK logs its fallbacks as warnings; the one sentence below says it.
    verbosity = vtkLogger.GetCurrentVerbosityCutoff()
    vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_ERROR)
    try:
        window = vtkRenderWindow()
        window.SetOffScreenRendering(True)
        window.SetSize(PANEL - 2 * MARGIN, PANEL - 2 * MARGIN)
        window.AddRenderer(renderer)
        window.Initialize()
    finally:
        vtkLogger.SetStderrVerbosity(verbosity)
    if not window.IsCurrent():  # no OpenGL context: rendering now would crash the process
        raise AbdoSegError(
            "the preview's 3D view could not start OpenGL off-screen (EGL); install libEGL and a Mesa driver "
            "(Debian/Ubuntu: apt-get install libegl1 libgl1-mesa-dri)."
        )
    window.Render()
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ShouldRerenderOff()
    grab.ReadFrontBufferOff()
    grab.Update()
    width, height, _ = grab.GetOutput().GetDimensions()
    pixels = vtk_to_numpy(grab.GetOutput().GetPointData().GetScalars()).reshape(height, width, 3)
    window.Finalize()
    return np.ascontiguousarray(pixels[::-1])  # VTK's first row is the bottom one


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _framed(panel: np.ndarray, title: str, letters: tuple[str, str, str, str]) -> PILImage.Image:
    """``panel`` centred on a PANEL x PANEL tile with its title and edge letters (top, bottom, left, right)."""
    tile = PILImage.new("RGB", (PANEL, PANEL), BACKGROUND)
    height, width, _ = panel.shape
    tile.paste(PILImage.fromarray(panel), ((PANEL - width) // 2, (PANEL - height) // 2))
    draw = ImageDraw.Draw(tile)
    font = _font(14)
    draw.text((4, 3), title, fill=TEXT, font=font)
    top, bottom, left, right = letters
    middle = PANEL // 2
    draw.text((middle, MARGIN // 2), top, fill=TEXT, font=font, anchor="mm")
    draw.text((middle, PANEL - MARGIN // 2), bottom, fill=TEXT, font=font, anchor="mm")
    draw.text((MARGIN // 2, middle), left, fill=TEXT, font=font, anchor="mm")
    draw.text((PANEL - MARGIN // 2, middle), right, fill=TEXT, font=font, anchor="mm")
    return tile


def _draw_legend(picture: PILImage.Image, with_reference: bool) -> None:
    """Organ names in their colours along the bottom strip, and what fill and outline mean."""
    draw = ImageDraw.Draw(picture)
    font = _font(15)
    x, middle = 10, 2 * PANEL + LEGEND_HEIGHT // 2
    for organ in ORGANS:
        colour = tuple(round(255 * c) for c in organ.color)
        draw.rectangle((x, middle - 7, x + 14, middle + 7), fill=colour)
        draw.text((x + 20, middle), organ.title, fill=colour, font=font, anchor="lm")
        x += 20 + round(draw.textlength(organ.title, font=font)) + 22
    if with_reference:
        draw.text((SIZE[0] - 10, middle), "fill: segmentation, outline: reference", fill=TEXT, font=font, anchor="rm")
