"""Organ surfaces: volumes, positions, closedness, LPS/RAS, every file format, ``abdoseg export``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import slicerio
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkFiltersCore import vtkFeatureEdges, vtkMassProperties
from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkSTLReader
from vtkmodules.vtkIOPLY import vtkPLYReader
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

from AbdoSegLib.cli import main
from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image, write_image
from AbdoSegLib.io.seg_nrrd import write_segmentation
from AbdoSegLib.organs import ORGANS, organ_by_name
from AbdoSegLib.resources import SAMPLE_CT, SAMPLE_REFERENCE
from AbdoSegLib.surfaces.meshes import export_surfaces, organ_surfaces
from AbdoSegLib.surfaces.options import FORMATS
from test_cli import assert_refused, run_cli

READERS = {"stl": vtkSTLReader, "obj": vtkOBJReader, "ply": vtkPLYReader, "vtp": vtkXMLPolyDataReader}
LIVER, SPLEEN = organ_by_name("liver"), organ_by_name("spleen")


@pytest.fixture(scope="module")
def reference() -> Image:
    """The bundled reference labels: 122x101x112 voxels of 3 mm, all four organs."""
    return read_image(SAMPLE_REFERENCE)


def grid_affine(spacing=(0.8, 1.1, 2.0), origin=(-40.0, 25.0, 110.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def ball(shape, centre, radius_voxels, label=LIVER.label) -> np.ndarray:
    """uint8 labelmap (shape) with a ball of ``label`` (radius in voxels, isotropic in index space)."""
    index = np.indices(shape, dtype=np.float64)
    inside = sum((index[axis] - centre[axis]) ** 2 for axis in range(3)) <= radius_voxels**2
    return (inside * label).astype(np.uint8)


def box_labels() -> tuple[Image, tuple[slice, slice, slice]]:
    """A liver box of 18 x 13 x 9 voxels on an anisotropic grid, and its voxel slices."""
    array = np.zeros((30, 24, 16), dtype=np.uint8)
    box = (slice(5, 23), slice(4, 17), slice(3, 12))
    array[box] = LIVER.label
    return Image(array, grid_affine()), box


def mesh_volume(mesh) -> float:
    properties = vtkMassProperties()
    properties.SetInputData(mesh)
    properties.Update()
    return properties.GetVolume()


def signed_volume(mesh) -> float:
    """Volume by the divergence theorem: positive when the triangles face outwards."""
    points = vtk_to_numpy(mesh.GetPoints().GetData()).astype(np.float64)
    triangles = vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    a, b, c = (points[triangles[:, n]] for n in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def open_edges(mesh) -> int:
    """Boundary plus non-manifold edges: 0 for a closed surface."""
    edges = vtkFeatureEdges()
    edges.SetInputData(mesh)
    edges.BoundaryEdgesOn()
    edges.NonManifoldEdgesOn()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    return edges.GetOutput().GetNumberOfCells()


def read_mesh(path: Path):
    """(reader, polydata) of a surface file; STL triangles kept as written (no point merging)."""
    reader = READERS[path.suffix.lstrip(".")]()
    if isinstance(reader, vtkSTLReader):
        reader.MergingOff()
    reader.SetFileName(str(path))
    reader.Update()
    return reader, reader.GetOutput()


def world_bounds(affine: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
    """(3, 2) world min/max of a voxel box's outer faces (half a voxel beyond the centres)."""
    corners = np.array([[s.start - 0.5 if pick else s.stop - 0.5 for s, pick in zip(box, picks)]
                        for picks in np.ndindex(2, 2, 2)])
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return np.stack([world.min(axis=0), world.max(axis=0)], axis=1)


# --------------------------------------------------------------------------- geometry


def test_ball_and_box_volumes_match_the_voxel_volume():
    affine = grid_affine()
    labels = Image(ball((40, 36, 24), (19.6, 17.3, 11.8), 10.5, SPLEEN.label), affine)
    box, _ = box_labels()
    for image, organ in ((labels, SPLEEN), (box, LIVER)):
        voxel_volume = np.count_nonzero(image.array) * abs(np.linalg.det(affine[:3, :3]))
        for smoothing in (0.0, 0.5):
            mesh = organ_surfaces(image, smoothing=smoothing)[organ]
            assert mesh_volume(mesh) == pytest.approx(voxel_volume, rel=0.03)


def test_real_organ_volumes_match_the_voxel_volume(reference):
    surfaces = organ_surfaces(reference)
    assert list(surfaces) == list(ORGANS)
    for organ, mesh in surfaces.items():
        voxel_volume = np.count_nonzero(reference.array == organ.label) * reference.voxel_volume_ml * 1000
        assert mesh_volume(mesh) == pytest.approx(voxel_volume, rel=0.03), organ.name


def test_surfaces_are_closed_and_face_outwards(reference):
    # An organ that touches the volume's edge is closed too (the crop is padded).
    edge = Image(ball((20, 20, 20), (0.0, 10.0, 10.0), 6.0), grid_affine())
    for mesh in [*organ_surfaces(reference).values(), organ_surfaces(edge)[LIVER]]:
        assert mesh.GetNumberOfPolys() > 0
        assert open_edges(mesh) == 0
        assert signed_volume(mesh) == pytest.approx(mesh_volume(mesh), rel=1e-6)


def test_mesh_bounds_are_the_labelmap_world_bounds():
    labels, box = box_labels()
    expected = world_bounds(labels.affine, box)
    half_voxel = labels.spacing[:, None] / 2
    unsmoothed = np.array(organ_surfaces(labels, smoothing=0.0)[LIVER].GetBounds()).reshape(3, 2)
    np.testing.assert_allclose(unsmoothed, expected, atol=1e-4)
    smoothed = np.array(organ_surfaces(labels)[LIVER].GetBounds()).reshape(3, 2)
    assert np.all(np.abs(smoothed - expected) <= half_voxel)


def test_oblique_mirrored_affine_puts_the_mesh_at_its_world_position():
    angle_z, angle_x = np.radians(30.0), np.radians(-20.0)
    rotate_z = np.array([[np.cos(angle_z), -np.sin(angle_z), 0], [np.sin(angle_z), np.cos(angle_z), 0], [0, 0, 1]])
    rotate_x = np.array([[1, 0, 0], [0, np.cos(angle_x), -np.sin(angle_x)], [0, np.sin(angle_x), np.cos(angle_x)]])
    affine = np.eye(4)
    affine[:3, :3] = rotate_z @ rotate_x @ np.diag([-1.5, 1.5, 1.5])  # mirrored: determinant < 0
    affine[:3, 3] = (120.0, -35.0, 60.0)
    centre = np.array([14.0, 17.0, 12.5])
    labels = Image(ball((30, 32, 26), centre, 8.0), affine)
    mesh = organ_surfaces(labels)[LIVER]

    points = vtk_to_numpy(mesh.GetPoints().GetData()).astype(np.float64)
    expected_centre = affine[:3, :3] @ centre + affine[:3, 3]
    np.testing.assert_allclose(points.mean(axis=0), expected_centre, atol=0.3)
    radii = np.linalg.norm(points - expected_centre, axis=1)
    assert np.all(np.abs(radii - 8.0 * 1.5) < 1.5)  # a ball of 12 mm radius, within a voxel
    assert signed_volume(mesh) > 0  # triangles still face outwards
    normals = vtk_to_numpy(mesh.GetPointData().GetNormals())
    assert np.mean(np.einsum("ij,ij->i", normals, points - expected_centre) > 0) > 0.99


def test_lps_and_ras_differ_by_the_signs_of_x_and_y(reference):
    ras = organ_surfaces(reference, "ras")
    lps = organ_surfaces(reference, "lps")
    for organ in ORGANS:
        ras_points = vtk_to_numpy(ras[organ].GetPoints().GetData())
        lps_points = vtk_to_numpy(lps[organ].GetPoints().GetData())
        np.testing.assert_allclose(lps_points, ras_points * np.array([-1.0, -1.0, 1.0]), atol=1e-3)


def test_decimation_reduces_the_triangles_and_keeps_the_surface(reference):
    full = organ_surfaces(reference)[LIVER]
    decimated = organ_surfaces(reference, decimation=0.5)[LIVER]
    assert decimated.GetNumberOfPolys() < 0.6 * full.GetNumberOfPolys()
    assert open_edges(decimated) == 0
    # Slicer's decimation bounds no error (maximum error 1 = the whole mesh): it shrinks a little.
    assert mesh_volume(decimated) == pytest.approx(mesh_volume(full), rel=0.05)


def test_an_empty_labelmap_or_bad_factors_are_refused(tmp_path, reference):
    with pytest.raises(AbdoSegError, match="no organ"):
        export_surfaces(reference.with_array(np.zeros(reference.shape, np.uint8)), tmp_path / "out")
    with pytest.raises(AbdoSegError, match="smoothing factor must be between 0 and 1"):
        organ_surfaces(reference, smoothing=1.5)


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("merge", [False, True], ids=["per-organ", "merged"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back_with_vtk(tmp_path, reference, fmt, merge):
    surfaces = organ_surfaces(reference, "lps")
    written = export_surfaces(reference, tmp_path / "out", fmt, "lps", merge)
    meshes = [path for path in written if path.suffix == f".{fmt}"]
    assert all(path.parent == tmp_path / "out" and "_LPS." in path.name for path in written)
    assert len(meshes) == (1 if merge else len(ORGANS))
    if not merge:
        assert [path.name for path in meshes] == [f"{organ.name}_LPS.{fmt}" for organ in ORGANS]
    read = [read_mesh(path)[1] for path in meshes]
    assert sum(mesh.GetNumberOfPolys() for mesh in read) == sum(mesh.GetNumberOfPolys() for mesh in surfaces.values())
    if fmt != "stl":  # STL stores three corners per triangle, not shared points
        assert sum(mesh.GetNumberOfPoints() for mesh in read) == sum(mesh.GetNumberOfPoints() for mesh in surfaces.values())
    if merge:
        mesh = read[0]
        organs_in_file = {
            "stl": lambda: len(ORGANS),  # STL has no groups: every organ's triangles are there (count above)
            "obj": lambda: len(np.unique(vtk_to_numpy(mesh.GetCellData().GetArray("GroupIds")))),
            "ply": lambda: len(np.unique(vtk_to_numpy(mesh.GetPointData().GetArray("RGB")), axis=0)),
            "vtp": lambda: len(np.unique(vtk_to_numpy(mesh.GetPointData().GetArray("Label")))),
        }[fmt]()
        assert organs_in_file == len(ORGANS)
    for organ, mesh in zip(ORGANS, read if not merge else []):
        np.testing.assert_allclose(mesh.GetBounds(), surfaces[organ].GetBounds(), atol=1e-3)


@pytest.mark.parametrize("space", ["LPS", "RAS"])
def test_files_say_their_coordinate_system(tmp_path, reference, space):
    folder = tmp_path / space
    for fmt in FORMATS:
        export_surfaces(reference, folder, fmt, space.lower(), merge=True)
    tag = f"SPACE={space}"
    stl_reader, _ = read_mesh(folder / f"organs_{space}.stl")
    assert tag in stl_reader.GetHeader()
    obj_reader, _ = read_mesh(folder / f"organs_{space}.obj")
    assert tag in obj_reader.GetComment()
    ply_reader, _ = read_mesh(folder / f"organs_{space}.ply")
    comments = ply_reader.GetComments()
    assert any(tag in comments.GetValue(n) for n in range(comments.GetNumberOfValues()))
    _, vtp = read_mesh(folder / f"organs_{space}.vtp")
    assert vtp.GetFieldData().GetAbstractArray("SPACE").GetValue(0) == space


def test_lps_and_ras_files_differ_by_the_signs_of_x_and_y(tmp_path, reference):
    lps = read_mesh(export_surfaces(reference, tmp_path / "lps", "stl", "lps", merge=True)[0])[1]
    ras = read_mesh(export_surfaces(reference, tmp_path / "ras", "stl", "ras", merge=True)[0])[1]
    np.testing.assert_allclose(
        vtk_to_numpy(lps.GetPoints().GetData()), vtk_to_numpy(ras.GetPoints().GetData()) * np.array([-1, -1, 1]), atol=1e-3
    )


@pytest.mark.parametrize("merge", [False, True], ids=["per-organ", "merged"])
def test_obj_materials_carry_the_organ_colours(tmp_path, reference, merge):
    written = export_surfaces(reference, tmp_path / "out", "obj", merge=merge)
    colours = {}
    for material_file in [path for path in written if path.suffix == ".mtl"]:
        obj_file = material_file.with_suffix(".obj")
        assert f"mtllib {material_file.name}" in obj_file.read_text().splitlines()[:3]
        name = None
        for line in material_file.read_text().splitlines():
            if line.startswith("newmtl "):
                name = line.split()[1]
            elif line.startswith("Kd "):
                colours[name] = tuple(float(v) for v in line.split()[1:])
    assert set(colours) == {organ.name for organ in ORGANS}
    for organ in ORGANS:
        np.testing.assert_allclose(colours[organ.name], organ.color, atol=1e-5)


def test_ply_vertices_carry_the_organ_colours(tmp_path, reference):
    for path in export_surfaces(reference, tmp_path / "out", "ply"):
        organ = organ_by_name(path.name.removesuffix("_LPS.ply"))
        rgb = vtk_to_numpy(read_mesh(path)[1].GetPointData().GetArray("RGB"))
        assert np.all(rgb == np.round(np.array(organ.color) * 255))


# --------------------------------------------------------------------------- abdoseg export


def test_cli_export_writes_the_files(tmp_path, capsys):
    out = tmp_path / "surfaces"
    assert main(["export", str(SAMPLE_REFERENCE), "-o", str(out), "--format", "ply", "--ras"]) == 0
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted(f"{organ.name}_RAS.ply" for organ in ORGANS)
    printed = capsys.readouterr().out
    assert all(str(out / name) in printed for name in names)


def test_cli_export_reads_a_slicer_segmentation(tmp_path, reference):
    segmentation = tmp_path / "organs.seg.nrrd"
    write_segmentation(reference, segmentation)
    assert main(["export", str(segmentation), "-o", str(tmp_path / "out"), "--merge", "--format", "vtp"]) == 0
    _, from_segmentation = read_mesh(tmp_path / "out" / "organs_LPS.vtp")
    expected = export_surfaces(reference, tmp_path / "expected", "vtp", merge=True)[0]
    assert from_segmentation.GetNumberOfPolys() == read_mesh(expected)[1].GetNumberOfPolys()
    np.testing.assert_allclose(from_segmentation.GetBounds(), read_mesh(expected)[1].GetBounds(), atol=1e-3)


def test_cli_export_refuses_an_existing_folder_unless_forced(tmp_path):
    out = tmp_path / "out"
    assert main(["export", str(SAMPLE_REFERENCE), "-o", str(out), "--format", "obj"]) == 0
    assert_refused(run_cli("export", str(SAMPLE_REFERENCE), "-o", str(out)), str(out), "--force")
    assert main(["export", str(SAMPLE_REFERENCE), "-o", str(out), "--force"]) == 0  # a folder export wrote: replaced
    assert sorted(path.name for path in out.iterdir()) == sorted(f"{organ.name}_LPS.stl" for organ in ORGANS)
    (out / "keep.txt").write_text("mine")
    assert_refused(run_cli("export", str(SAMPLE_REFERENCE), "-o", str(out), "--force"), str(out), "keep.txt")
    assert (out / "keep.txt").read_text() == "mine"


def _segmentation_without_organs(tmp_path: Path, reference: Image) -> Path:
    path = tmp_path / "other.seg.nrrd"
    segmentation = slicerio.create_segmentation(reference.shape, np.diag([-1.0, -1.0, 1.0, 1.0]) @ reference.affine)
    slicerio.add_segment(segmentation, reference.array == 1, {"id": "tumor", "name": "Tumor"})
    slicerio.write_segmentation(str(path), segmentation)
    return path


@pytest.mark.parametrize(
    "case, phrases",
    [
        ("ct", ["a labelmap of organ ids is needed"]),
        ("missing", ["does not exist"]),
        ("truncated", ["could not be read"]),
        ("no organ", ["no organ"]),
        ("no organ segment", ["no segment that matches an AbdoSeg organ"]),
        ("smoothing", ["smoothing factor must be between 0 and 1"]),
    ],
)
def test_cli_export_refuses_bad_input_in_one_sentence(tmp_path, reference, case, phrases):
    labels, extra = tmp_path / "labels.nii.gz", []
    if case == "ct":
        labels = SAMPLE_CT
    elif case == "truncated":
        labels.write_bytes(SAMPLE_REFERENCE.read_bytes()[:3000])
    elif case == "no organ":
        write_image(reference.with_array(np.zeros(reference.shape, np.uint8)), labels)
    elif case == "no organ segment":
        labels = _segmentation_without_organs(tmp_path, reference)
    elif case == "smoothing":
        labels, extra = SAMPLE_REFERENCE, ["--smoothing", "2"]
    out = tmp_path / "out"
    assert_refused(run_cli("export", str(labels), "-o", str(out), *extra), *phrases)
    assert not out.exists()
