"""The Slicer scene layer (AbdoSegLib.scene) against real MRML classes from ``slicer-core``, and AbdoSeg.py's imports.

Every test builds its own MRML scene. Surfaces come from Slicer's own labelmap-to-surface
converter and files from Slicer's own export; they are read back with VTK's readers.
"""

from __future__ import annotations

import os

# The OBJ export builds a VTK render window (it does not render): make it an off-screen one.
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import ast  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402
from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402

from AbdoSegLib import scene  # noqa: E402
from AbdoSegLib.analysis.metrics import compare_labelmaps  # noqa: E402
from AbdoSegLib.errors import AbdoSegError  # noqa: E402
from AbdoSegLib.image import Image  # noqa: E402
from AbdoSegLib.io.image_files import read_image  # noqa: E402
from AbdoSegLib.io.labelmaps import read_labels  # noqa: E402
from AbdoSegLib.organs import ORGANS, organ_by_name  # noqa: E402
from AbdoSegLib.resources import SAMPLE_CT, SAMPLE_REFERENCE  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[1] / "AbdoSeg"
CLOSED_SURFACE = "Closed surface"
SPACING_MM = 3.0  # the sample's voxel size
LOGIC = slicer.vtkSlicerSegmentationsModuleLogic


@pytest.fixture(scope="module")
def reference() -> Image:
    """The bundled reference labels: 122x101x112 voxels of 3 mm, all four organs (read-only)."""
    labels = read_image(SAMPLE_REFERENCE)
    labels.array.setflags(write=False)
    return labels


@pytest.fixture
def mrml():
    """A fresh MRML scene, with Slicer's segmentation converters registered (as the application does at startup)."""
    scene.register_converter_rules()
    return slicer.vtkMRMLScene()


@pytest.fixture
def ct(mrml):
    """The sample CT read into a volume node through a Slicer storage node, as Slicer's own loader does."""
    storage_node = mrml.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage_node.SetFileName(str(SAMPLE_CT))
    volume_node = mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "AbdoSegSampleCT")
    volume_node.SetAndObserveStorageNodeID(storage_node.GetID())
    assert storage_node.ReadData(volume_node)
    return volume_node


@pytest.fixture
def segmentation(ct):
    """The bundled reference labels (standing in for a prediction) imported onto the sample CT."""
    return scene.segmentation_from_labelmap(SAMPLE_REFERENCE, ct)


def matrix_array(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_array(matrix)


def organ_box_ras(labels: Image, organ) -> tuple[np.ndarray, np.ndarray]:
    """World (RAS) box of an organ's voxels: the outer faces of its outermost voxels."""
    index = np.argwhere(labels.array == organ.label)
    corners = np.array([[a, b, c] for a in (index[:, 0].min() - 0.5, index[:, 0].max() + 0.5)
                        for b in (index[:, 1].min() - 0.5, index[:, 1].max() + 0.5)
                        for c in (index[:, 2].min() - 0.5, index[:, 2].max() + 0.5)])
    world = corners @ labels.affine[:3, :3].T + labels.affine[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def points_of(poly_data) -> np.ndarray:
    return vtk_to_numpy(poly_data.GetPoints().GetData()).astype(np.float64)


def stl_triangle_count(path: Path) -> int:
    """The triangle count a binary STL file declares (after its 80-byte header)."""
    return int(np.frombuffer(path.read_bytes()[80:84], dtype="<u4")[0])


def read_mesh(path: Path, reader_class):
    reader = reader_class()
    reader.SetFileName(str(path))
    reader.Update()
    return reader


def read_model_with_slicer(path: Path):
    """A surface file read by Slicer's model storage node, which turns the file's SPACE into the scene's RAS."""
    mrml = slicer.vtkMRMLScene()
    model = mrml.AddNewNodeByClass("vtkMRMLModelNode")
    storage_node = mrml.AddNewNodeByClass("vtkMRMLModelStorageNode")
    storage_node.SetFileName(str(path))
    assert storage_node.ReadData(model), path
    return model.GetPolyData()


def with_labels(labels: Image, drop=(), shift=None) -> Image:
    """A copy of ``labels`` without the organs named in ``drop``, and with ``shift = (organ name, axis, voxels)`` applied."""
    array = np.array(labels.array, copy=True)
    for name in drop:
        array[array == organ_by_name(name).label] = 0
    if shift is not None:
        name, axis, voxels = shift
        label = organ_by_name(name).label
        mask = array == label
        array[mask] = 0
        array[np.roll(mask, voxels, axis=axis) & (array == 0)] = label
    return labels.with_array(array)


def node_classes(mrml) -> list[str]:
    """The classes of the scene's nodes, but the subject hierarchy (Slicer's bookkeeping, made on first use)."""
    names = (mrml.GetNthNode(i).GetClassName() for i in range(mrml.GetNumberOfNodes()))
    return sorted(name for name in names if name != "vtkMRMLSubjectHierarchyNode")


def segment_ids(segmentation_node) -> list[str]:
    return list(segmentation_node.GetSegmentation().GetSegmentIDs())


# Reading the CT --------------------------------------------------------------------------


def test_a_volume_node_gives_the_engine_the_voxels_and_geometry_of_its_file(ct):
    engine = read_image(SAMPLE_CT)  # nibabel
    slicer_image = scene.image_from_volume(ct)
    assert slicer_image.shape == engine.shape == (122, 101, 112)
    np.testing.assert_array_equal(slicer_image.array, engine.array)
    np.testing.assert_allclose(slicer_image.affine, engine.affine, atol=1e-4)
    # slicer.util's array is the same voxels in Slicer's (k, j, i) order.
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), engine.array.transpose(2, 1, 0))


def test_writing_a_volume_keeps_the_nodes_own_storage_node(ct, tmp_path):
    original_file = ct.GetStorageNode().GetFileName()
    written = scene.write_volume(ct, tmp_path / "input.nrrd")
    copy = read_image(written)
    engine = read_image(SAMPLE_CT)
    np.testing.assert_array_equal(copy.array, engine.array)
    np.testing.assert_allclose(copy.affine, engine.affine, atol=1e-4)
    assert ct.GetStorageNode().GetFileName() == original_file


# Labelmap to segmentation ------------------------------------------------------------------


def test_a_labelmap_becomes_four_named_coloured_segments_with_terminology(segmentation):
    assert segment_ids(segmentation) == [organ.name for organ in ORGANS]
    for organ in ORGANS:
        segment = segmentation.GetSegmentation().GetSegment(organ.name)
        assert segment.GetName() == organ.title
        assert segment.GetColor() == pytest.approx(organ.color, abs=1e-6)
        assert segment.GetTerminology() == organ.terminology_string
        assert segment.HasTag(slicer.vtkSegment.GetTerminologyEntryTagName())  # what SetTerminology stores it in
        assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()
        assert LOGIC.GetSegmentStatus(segment) == LOGIC.Completed


def test_the_segments_hold_the_labelmap_on_the_volumes_geometry(segmentation, ct, reference):
    # The reference geometry is the volume's, and the volume is referenced.
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert segmentation.GetNodeReference(role) is ct
    volume_geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(vtk_matrix(ijk_to_ras(ct)), ct.GetImageData())
    assert segmentation.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    ) == volume_geometry
    # The internal (shared) labelmap lies on the volume's grid and holds the labels unchanged.
    internal = segmentation.GetBinaryLabelmapInternalRepresentation("liver")
    matrix = vtk.vtkMatrix4x4()
    internal.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose(matrix_array(matrix), ijk_to_ras(ct), atol=1e-6)
    assert internal.GetExtent() == ct.GetImageData().GetExtent()
    voxels = vtk_to_numpy(internal.GetPointData().GetScalars()).reshape(reference.shape[::-1])
    np.testing.assert_array_equal(voxels, reference.array.transpose(2, 1, 0))
    for organ in ORGANS:
        assert segmentation.GetSegmentation().GetSegment(organ.name).GetLabelValue() == organ.label
    # Exported again by Slicer's logic onto the volume, every organ is where the labelmap had it.
    exported = scene.labelmap_from_segments(segmentation, {o.name: o.name for o in ORGANS}, ct)
    np.testing.assert_array_equal(exported.array, reference.array)
    np.testing.assert_allclose(exported.affine, reference.affine, atol=1e-4)


def test_an_image_and_a_file_give_the_same_segmentation(mrml, ct, reference):
    from_file = scene.segmentation_from_labelmap(SAMPLE_REFERENCE, ct, name="from file")
    from_image = scene.segmentation_from_labelmap(reference, ct, name="from image")
    everything = {o.name: o.name for o in ORGANS}
    np.testing.assert_array_equal(
        scene.labelmap_from_segments(from_file, everything, ct).array, scene.labelmap_from_segments(from_image, everything, ct).array
    )
    assert from_file.GetName() == "from file" and from_image.GetName() == "from image"


def test_without_a_volume_the_reference_geometry_is_the_labelmaps_grid(mrml, reference):
    node = scene.segmentation_from_labelmap(reference, scene=mrml)
    image = vtk.vtkImageData()
    image.SetDimensions(*reference.shape)
    expected = slicer.vtkSegmentationConverter.SerializeImageGeometry(vtk_matrix(reference.affine), image)
    assert node.GetSegmentation().GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()) == expected
    with pytest.raises(ValueError, match="no MRML scene"):
        scene.segmentation_from_labelmap(reference)


def test_the_segmentation_follows_the_volumes_parent_transform(mrml, ct, reference):
    transform = mrml.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    transform.SetMatrixTransformToParent(matrix)
    ct.SetAndObserveTransformNodeID(transform.GetID())
    node = scene.segmentation_from_labelmap(reference, ct)
    assert node.GetTransformNodeID() == transform.GetID()
    scene.create_closed_surfaces(node)
    local = node.GetSegmentation().GetSegment("spleen").GetRepresentation(CLOSED_SURFACE)
    world = vtk.vtkPolyData()
    assert LOGIC.GetSegmentClosedSurfaceRepresentation(node, "spleen", world)  # parent transform applied
    np.testing.assert_allclose(points_of(world) - points_of(local), [[25.0, 0.0, 0.0]] * local.GetNumberOfPoints(), atol=1e-3)


def test_a_reused_segmentation_node_gets_exactly_the_organs(mrml, ct, reference):
    node = mrml.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    node.GetSegmentation().AddEmptySegment("tumour", "Tumour")
    returned = scene.segmentation_from_labelmap(with_labels(reference, drop=["spleen"]), ct, segmentation_node=node)
    assert returned is node
    assert segment_ids(node) == [organ.name for organ in ORGANS]  # the spleen is an empty segment, as in the .seg.nrrd
    exported = scene.labelmap_from_segments(node, {o.name: o.name for o in ORGANS}, ct)
    assert not np.any(exported.array == organ_by_name("spleen").label)
    assert mrml.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 1


def test_values_that_are_not_organ_ids_are_refused(mrml, ct, reference):
    array = np.array(reference.array, copy=True)
    array[0, 0, 0] = 7
    with pytest.raises(AbdoSegError, match=r"\(7\) that are not organ labels"):
        scene.segmentation_from_labelmap(reference.with_array(array), ct)
    assert mrml.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


# Closed surfaces --------------------------------------------------------------------------


def test_converter_rules_are_registered_once():
    scene.register_converter_rules()
    scene.register_converter_rules()
    names = [rule.GetClassName() for rule in slicer.vtkSegmentationConverterFactory.GetInstance().GetConverterRules()]
    for rule in ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule"):
        assert names.count(rule) == 1


def test_closed_surfaces_are_closed_and_lie_on_their_organs(segmentation, ct, reference):
    scene.create_closed_surfaces(segmentation, 0.5)
    assert segmentation.GetSegmentation().GetConversionParameter("Smoothing factor") == "0.5"
    volume_bounds = [0.0] * 6
    ct.GetRASBounds(volume_bounds)
    for organ in ORGANS:
        surface = segmentation.GetSegmentation().GetSegment(organ.name).GetRepresentation(CLOSED_SURFACE)
        assert surface.GetNumberOfPoints() > 500, organ.name
        edges = vtk.vtkFeatureEdges()
        edges.SetInputData(surface)
        edges.BoundaryEdgesOn()
        edges.FeatureEdgesOff()
        edges.NonManifoldEdgesOff()
        edges.ManifoldEdgesOff()
        edges.Update()
        assert edges.GetOutput().GetNumberOfCells() == 0, f"{organ.name} surface has holes"
        low, high = organ_box_ras(reference, organ)
        bounds = np.array(surface.GetBounds()).reshape(3, 2)
        # On the organ's voxels (smoothing moves the surface by less than a voxel), inside the CT.
        np.testing.assert_array_less(low - SPACING_MM, bounds[:, 0])
        np.testing.assert_array_less(bounds[:, 1], high + SPACING_MM)
        np.testing.assert_array_less(bounds[:, 0], low + SPACING_MM)
        np.testing.assert_array_less(high - SPACING_MM, bounds[:, 1])
        np.testing.assert_array_less(np.array(volume_bounds[0::2]) - SPACING_MM, bounds[:, 0])
        np.testing.assert_array_less(bounds[:, 1], np.array(volume_bounds[1::2]) + SPACING_MM)
        mass = vtk.vtkMassProperties()
        mass.SetInputData(surface)
        voxel_ml = np.count_nonzero(reference.array == organ.label) * reference.voxel_volume_ml
        assert mass.GetVolume() / 1000.0 == pytest.approx(voxel_ml, rel=0.05), organ.name
    # The patient's right kidney lies at larger RAS x than the left one.
    def centre_x(name):
        return points_of(segmentation.GetSegmentation().GetSegment(name).GetRepresentation(CLOSED_SURFACE))[:, 0].mean()

    assert centre_x("right_kidney") > centre_x("left_kidney")


def test_a_new_smoothing_factor_rebuilds_the_surfaces(segmentation):
    def liver_surface():
        surface = vtk.vtkPolyData()
        surface.DeepCopy(segmentation.GetSegmentation().GetSegment("liver").GetRepresentation(CLOSED_SURFACE))
        return surface

    scene.create_closed_surfaces(segmentation, 0.0)
    rough = liver_surface()
    scene.create_closed_surfaces(segmentation, 1.0)
    smooth = liver_surface()
    assert segmentation.GetSegmentation().GetConversionParameter("Smoothing factor") == "1"
    assert rough.GetNumberOfPoints() == smooth.GetNumberOfPoints()
    assert np.abs(points_of(rough) - points_of(smooth)).max() > 0.5
    with pytest.raises(AbdoSegError, match="between 0 and 1"):
        scene.create_closed_surfaces(segmentation, 1.5)


def test_a_segmentation_made_before_the_converters_were_registered_still_gets_surfaces(mrml, ct, reference):
    """Outside the application the rules may come late; a segmentation copies them when it is made."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = list(factory.GetConverterRules())
    for rule in rules:
        factory.UnregisterConverterRule(rule)
    try:
        node = mrml.AddNewNodeByClass("vtkMRMLSegmentationNode", "early")
    finally:
        for rule in rules:
            factory.RegisterConverterRule(rule)
    scene.segmentation_from_labelmap(reference, ct, segmentation_node=node)
    assert not node.CreateClosedSurfaceRepresentation()  # its converter has no rules
    scene.create_closed_surfaces(node)
    for organ in ORGANS:
        assert node.GetSegmentation().GetSegment(organ.name).GetRepresentation(CLOSED_SURFACE).GetNumberOfPoints() > 500
        assert node.GetSegmentation().GetSegment(organ.name).GetTerminology() == organ.terminology_string


# Export -------------------------------------------------------------------------------------


def test_stl_files_are_lps_one_per_organ_and_match_slicers_surfaces(segmentation, ct, tmp_path):
    scene.create_closed_surfaces(segmentation)
    files = scene.export_surfaces(segmentation, tmp_path, "STL")
    assert [path.name for path in files] == sorted(f"AbdoSeg_{organ.title}.stl" for organ in ORGANS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name for path in files]  # no staging folder left
    volume_bounds = np.zeros(6)
    ct.GetRASBounds(volume_bounds)
    lps_low = np.array([-volume_bounds[1], -volume_bounds[3], volume_bounds[4]])
    lps_high = np.array([-volume_bounds[0], -volume_bounds[2], volume_bounds[5]])
    for organ in ORGANS:
        reader = read_mesh(tmp_path / f"AbdoSeg_{organ.title}.stl", vtk.vtkSTLReader)
        assert "SPACE=LPS" in reader.GetHeader()
        points = points_of(reader.GetOutput())
        np.testing.assert_array_less(lps_low - SPACING_MM, points.min(axis=0))
        np.testing.assert_array_less(points.max(axis=0), lps_high + SPACING_MM)
        surface = segmentation.GetSegmentation().GetSegment(organ.name).GetRepresentation(CLOSED_SURFACE)
        assert stl_triangle_count(tmp_path / f"AbdoSeg_{organ.title}.stl") == surface.GetNumberOfCells()
        # Slicer's surface with x and y negated; STL stores float32 and drops the shared points.
        expected = points_of(surface) * np.array([-1.0, -1.0, 1.0])
        assert cKDTree(expected).query(points)[0].max() < 1e-3
        assert cKDTree(points).query(expected)[0].max() < 1e-3


def test_merged_ras_stl_holds_every_organ(segmentation, tmp_path):
    files = scene.export_surfaces(segmentation, tmp_path, "stl", lps=False, merge=True)
    assert [path.name for path in files] == ["AbdoSeg.stl"]
    reader = read_mesh(files[0], vtk.vtkSTLReader)
    assert "SPACE=RAS" in reader.GetHeader()
    triangles = sum(segmentation.GetSegmentation().GetSegment(o.name).GetRepresentation(CLOSED_SURFACE).GetNumberOfCells() for o in ORGANS)
    assert stl_triangle_count(files[0]) == triangles
    all_points = np.concatenate([points_of(segmentation.GetSegmentation().GetSegment(o.name).GetRepresentation(CLOSED_SURFACE)) for o in ORGANS])
    np.testing.assert_allclose(np.array(reader.GetOutput().GetBounds()).reshape(3, 2),
                               np.stack([all_points.min(axis=0), all_points.max(axis=0)], axis=1), atol=1e-3)


def test_obj_holds_every_organ_with_its_colour(segmentation, tmp_path):
    files = scene.export_surfaces(segmentation, tmp_path, "OBJ")
    assert [path.name for path in files] == ["AbdoSeg.mtl", "AbdoSeg.obj"]
    obj_text = files[1].read_text()
    assert "SPACE=LPS" in obj_text.splitlines()[0]
    reader = read_mesh(files[1], vtk.vtkOBJReader)
    points = sum(segmentation.GetSegmentation().GetSegment(o.name).GetRepresentation(CLOSED_SURFACE).GetNumberOfPoints() for o in ORGANS)
    assert reader.GetOutput().GetNumberOfPoints() == points
    diffuse = [tuple(float(v) for v in line.split()[1:4]) for line in files[0].read_text().splitlines() if line.startswith("Kd ")]
    # Slicer scales each segment's colour by 1/3 for the OBJ material's diffuse colour.
    expected = sorted(tuple(c / 3 for c in organ.color) for organ in ORGANS)
    np.testing.assert_allclose(sorted(diffuse), expected, atol=1e-5)


def test_ply_files_carry_the_segment_colours_and_their_space(segmentation, tmp_path):
    files = scene.export_surfaces(segmentation, tmp_path, "PLY", lps=False)
    assert [path.name for path in files] == sorted(f"AbdoSeg_{organ.title}.ply" for organ in ORGANS)
    surfaces = [segmentation.GetSegmentation().GetSegment(organ.name).GetRepresentation(CLOSED_SURFACE) for organ in ORGANS]
    for organ, surface in zip(ORGANS, surfaces):
        path = tmp_path / f"AbdoSeg_{organ.title}.ply"
        header = path.read_bytes().split(b"end_header")[0]
        assert b"comment SPACE=RAS" in header and b"format binary" in header
        mesh = read_mesh(path, vtk.vtkPLYReader).GetOutput()
        colours = vtk_to_numpy(mesh.GetPointData().GetScalars())
        np.testing.assert_array_equal(np.unique(colours, axis=0), [np.round(np.array(organ.color) * 255)])
        np.testing.assert_allclose(points_of(mesh), points_of(surface), atol=1e-3)  # RAS: as in the scene
        np.testing.assert_allclose(points_of(read_model_with_slicer(path)), points_of(surface), atol=1e-3)
    (tmp_path / "merged").mkdir()
    merged = scene.export_surfaces(segmentation, tmp_path / "merged", "PLY", merge=True)
    assert [path.name for path in merged] == ["AbdoSeg.ply"]
    assert b"comment SPACE=LPS" in merged[0].read_bytes().split(b"end_header")[0]
    # Slicer reads the LPS file back onto the scene's RAS surfaces, every segment's in turn.
    np.testing.assert_allclose(points_of(read_model_with_slicer(merged[0])), np.concatenate([points_of(s) for s in surfaces]), atol=1e-3)


def test_a_segment_that_is_no_organ_is_exported_as_ply_in_its_own_name_and_colour(segmentation, tmp_path):
    tumour = segmentation.GetSegmentation().GetSegment("spleen")
    tumour.RemoveTag(slicer.vtkSegment.GetTerminologyEntryTagName())
    tumour.SetName("Tumour")
    tumour.SetColor(0.1, 0.9, 0.2)
    assert "spleen" not in scene.organ_segments(segmentation)
    files = scene.export_surfaces(segmentation, tmp_path, "ply", segment_ids=["spleen"])
    assert [path.name for path in files] == ["AbdoSeg_Tumour.ply"]
    mesh = read_mesh(files[0], vtk.vtkPLYReader).GetOutput()
    np.testing.assert_array_equal(np.unique(vtk_to_numpy(mesh.GetPointData().GetScalars()), axis=0), [[26, 230, 51]])
    np.testing.assert_allclose(points_of(mesh), points_of(tumour.GetRepresentation(CLOSED_SURFACE)) * [-1.0, -1.0, 1.0], atol=1e-3)


def test_export_skips_empty_segments_and_never_replaces_files_unasked(mrml, ct, reference, tmp_path):
    node = scene.segmentation_from_labelmap(with_labels(reference, drop=["spleen"]), ct, name="No spleen")
    files = scene.export_surfaces(node, tmp_path, "STL")
    assert [path.name for path in files] == sorted(f"No spleen_{o.title}.stl" for o in ORGANS if o.name != "spleen")
    before = {path: path.read_bytes() for path in files}
    with pytest.raises(AbdoSegError, match="already exists"):
        scene.export_surfaces(node, tmp_path, "STL")
    assert {path: path.read_bytes() for path in files} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(path.name for path in files)  # no staging folder left
    assert scene.export_surfaces(node, tmp_path, "STL", overwrite=True) == files
    with pytest.raises(ValueError, match="fmt must be one of"):
        scene.export_surfaces(node, tmp_path, "VTP")
    with pytest.raises(AbdoSegError, match="does not exist"):
        scene.export_surfaces(node, tmp_path / "nowhere", "STL")
    empty = scene.segmentation_from_labelmap(reference.with_array(np.zeros(reference.shape, np.uint8)), ct, name="empty")
    with pytest.raises(AbdoSegError, match="no segment with a surface"):
        scene.export_surfaces(empty, tmp_path, "STL")


# Matching and comparing -----------------------------------------------------------------------


def test_segments_are_matched_by_terminology_then_by_name(mrml, ct, reference):
    node = scene.segmentation_from_labelmap(reference, ct)
    segments = node.GetSegmentation()
    liver, right, left, spleen = (segments.GetSegment(o.name) for o in ORGANS)
    liver.SetName("Spleen")  # the terminology says liver: it is the liver
    right.RemoveTag(slicer.vtkSegment.GetTerminologyEntryTagName())
    right.SetName("RIGHT_KIDNEY")  # no terminology: matched by its name
    left.RemoveTag(slicer.vtkSegment.GetTerminologyEntryTagName())
    left.SetName("Tumour")  # neither
    spleen.SetTerminology("not a terminology string")
    spleen.SetName("Liver")  # a malformed terminology, and the liver's name, which the liver already has
    assert scene.organ_segments(node) == {"liver": "liver", "right_kidney": "right_kidney"}


@pytest.mark.parametrize("name", ["kidney_right", "Kidney Right", "RIGHT KIDNEY"])
def test_a_segment_named_like_an_organ_in_any_word_order_and_case_is_that_organ_here_and_on_the_command_line(mrml, tmp_path, name):
    array = np.zeros((6, 5, 4), np.uint8)
    for organ in ORGANS:
        array[organ.label, 1:3, 1:3] = organ.label
    node = scene.segmentation_from_labelmap(Image(array, np.diag([2.0, 2.0, 3.0, 1.0])), scene=mrml)
    segment = node.GetSegmentation().GetSegment("right_kidney")
    segment.RemoveTag(slicer.vtkSegment.GetTerminologyEntryTagName())
    segment.SetName(name)
    assert scene.organ_segments(node)["right_kidney"] == "right_kidney"
    # Saved by Slicer and read by the command line's reader, the same segment is the same organ.
    storage_node = slicer.vtkMRMLSegmentationStorageNode()
    storage_node.SetFileName(str(tmp_path / "named.seg.nrrd"))
    assert storage_node.WriteData(node)
    np.testing.assert_array_equal(read_labels(tmp_path / "named.seg.nrrd", None).array, array)


def test_comparison_matches_the_engines_metrics_on_one_grid(mrml, ct, reference):
    prediction_labels = with_labels(reference, drop=["right_kidney", "spleen"], shift=("liver", 1, 2))
    reference_labels = with_labels(reference, drop=["right_kidney", "left_kidney"])
    prediction = scene.segmentation_from_labelmap(prediction_labels, ct, name="prediction")
    # The reference on a smaller grid (no volume), with segments known only by their names.
    cropped = Image(np.ascontiguousarray(reference_labels.array[6:, 4:, 10:]), reference_labels.affine.copy())
    cropped.affine[:3, 3] += reference_labels.affine[:3, :3] @ np.array([6.0, 4.0, 10.0])
    manual = scene.segmentation_from_labelmap(cropped, scene=mrml, name="manual")
    for organ in ORGANS:
        segment = manual.GetSegmentation().GetSegment(organ.name)
        segment.RemoveTag(slicer.vtkSegment.GetTerminologyEntryTagName())
        segment.SetName(organ.name.replace("_", " ").upper())
    nodes_before = node_classes(mrml)

    metrics = scene.compare_segmentations(prediction, manual)

    assert node_classes(mrml) == nodes_before  # temporary labelmaps and their colour tables removed
    expected = compare_labelmaps(prediction_labels, reference_labels)
    assert {name: m["status"] for name, m in metrics.items()} == {
        "liver": "compared", "right_kidney": "both_empty", "left_kidney": "reference_empty", "spleen": "prediction_empty",
    }
    for name, values in expected.items():
        for key, value in values.items():
            if isinstance(value, float) and math.isfinite(value):
                assert metrics[name][key] == pytest.approx(value, rel=1e-9, abs=1e-9), (name, key)
            else:
                assert metrics[name][key] == value, (name, key)
    assert 0.5 < metrics["liver"]["dice"] < 1.0
    assert metrics["liver"]["hd"] == pytest.approx(6.0)  # the 2-voxel shift of 3 mm voxels


def test_without_a_volume_the_predictions_own_geometry_is_used(mrml, reference):
    prediction = scene.segmentation_from_labelmap(with_labels(reference, shift=("spleen", 0, -1)), scene=mrml, name="prediction")
    truth = scene.segmentation_from_labelmap(reference, scene=mrml, name="truth")
    classes_before = node_classes(mrml)
    metrics = scene.compare_segmentations(prediction, truth)
    assert node_classes(mrml) == classes_before
    assert metrics["liver"]["dice"] == 1.0 and metrics["liver"]["hd"] == 0.0
    assert metrics["spleen"]["hd"] == pytest.approx(SPACING_MM)


def test_a_mapping_names_reference_segments_by_hand(mrml, ct, reference):
    prediction = scene.segmentation_from_labelmap(reference, ct, name="prediction")
    manual = scene.segmentation_from_labelmap(reference, ct, name="manual")
    odd = manual.GetSegmentation().GetSegment("spleen")
    odd.RemoveTag(slicer.vtkSegment.GetTerminologyEntryTagName())
    odd.SetName("Organ A")
    assert scene.compare_segmentations(prediction, manual)["spleen"]["status"] == "reference_empty"
    mapped = scene.compare_segmentations(prediction, manual, mapping={"spleen": "spleen"})
    assert mapped["spleen"]["dice"] == 1.0
    with pytest.raises(AbdoSegError, match="no segment with the ID 'nothing'"):
        scene.compare_segmentations(prediction, manual, mapping={"spleen": "nothing"})
    with pytest.raises(KeyError, match="no organ called 'pancreas'"):
        scene.compare_segmentations(prediction, manual, mapping={"pancreas": "spleen"})


def test_a_reference_without_organs_is_refused_with_what_to_do(mrml, ct, reference):
    prediction = scene.segmentation_from_labelmap(reference, ct)
    other = mrml.AddNewNodeByClass("vtkMRMLSegmentationNode", "tumours")
    other.GetSegmentation().AddEmptySegment("t1", "Tumour 1")
    with pytest.raises(AbdoSegError, match="give a mapping"):
        scene.compare_segmentations(prediction, other)
    with pytest.raises(AbdoSegError, match="no segment of tumours is an AbdoSeg organ"):
        scene.compare_segmentations(other, prediction)


# Metrics table -------------------------------------------------------------------------------


def test_the_metrics_table_has_one_row_per_organ_and_the_metrics_in_its_cells(mrml, ct, reference):
    prediction = scene.segmentation_from_labelmap(with_labels(reference, drop=["right_kidney", "spleen"], shift=("liver", 2, 1)), ct)
    truth = scene.segmentation_from_labelmap(with_labels(reference, drop=["right_kidney", "left_kidney"]), ct)
    metrics = scene.compare_segmentations(prediction, truth)

    table_node = scene.metrics_table(mrml, metrics)

    table = table_node.GetTable()
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == [name for name, _, _ in scene.METRICS_COLUMNS] == [
        "Organ", "Dice", "HD (mm)", "HD95 (mm)", "ASSD (mm)", "NSD", "Volume (mL)", "Reference volume (mL)",
    ]
    assert table_node.GetNumberOfRows() == len(ORGANS)
    assert [table_node.GetCellText(row, 0) for row in range(len(ORGANS))] == [organ.title for organ in ORGANS]
    for row, organ in enumerate(ORGANS):
        for column, (name, key, _unit) in enumerate(scene.METRICS_COLUMNS[1:], start=1):
            assert table.GetColumn(column).GetDataType() == vtk.VTK_DOUBLE
            cell = table.GetValue(row, column).ToDouble()
            value = metrics[organ.name][key]
            if value is None:
                assert math.isnan(cell), (organ.name, name)
            else:
                assert cell == pytest.approx(value), (organ.name, name)
    assert math.isnan(table.GetValueByName(1, "Dice").ToDouble())  # right kidney: in neither
    assert math.isinf(table.GetValueByName(2, "HD (mm)").ToDouble())  # left kidney: predicted only
    assert table.GetValueByName(0, "Dice").ToDouble() == pytest.approx(metrics["liver"]["dice"])
    assert table_node.GetColumnUnitLabel("HD (mm)") == "mm" and table_node.GetColumnUnitLabel("Volume (mL)") == "mL"
    assert "Hausdorff" in table_node.GetColumnDescription("HD (mm)")

    refilled = scene.metrics_table(mrml, {"liver": metrics["liver"]}, table_node)
    assert refilled is table_node
    assert table_node.GetNumberOfRows() == 1 and table_node.GetNumberOfColumns() == len(scene.METRICS_COLUMNS)


# AbdoSeg.py --------------------------------------------------------------------------------------

# What Slicer's Python has without any pip install: the standard library, Slicer's own packages.
SLICER_PROVIDED = {"qt", "ctk", "vtk", "vtkmodules", "slicer", "SampleData", "__future__"}
PURE_ABDOSEG = {"AbdoSegLib.organs", "AbdoSegLib.resources", "AbdoSegLib.surfaces.options"}
HEAVY = {"torch", "nibabel", "monai", "safetensors", "scipy", "numpy", "SimpleITK", "slicerio", "nrrd", "tqdm", "psutil", "PIL"}


def module_level_imports(tree: ast.Module) -> list[str]:
    """Names imported by statements that run on import (not inside functions or classes' methods)."""
    names = []

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.append(("." * node.level) + (node.module or ""))
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return names


def test_abdoseg_py_parses_and_imports_at_module_level_only_what_slicer_has():
    tree = ast.parse((MODULE_DIR / "AbdoSeg.py").read_text(), filename="AbdoSeg.py")
    imported = module_level_imports(tree)
    for name in imported:
        top = name.split(".")[0]
        assert top not in HEAVY, f"AbdoSeg.py imports {name} at module level"
        assert top in sys.stdlib_module_names or top in SLICER_PROVIDED or name in PURE_ABDOSEG, f"AbdoSeg.py imports {name} at module level"
    # The AbdoSegLib modules it may import at module level need only the standard library themselves.
    for module in PURE_ABDOSEG:
        path = MODULE_DIR / (module.replace(".", "/") + ".py")
        for name in module_level_imports(ast.parse(path.read_text())):
            assert name.split(".")[0] in sys.stdlib_module_names, f"{module} imports {name}"
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"AbdoSeg", "AbdoSegWidget", "AbdoSegLogic", "AbdoSegTest", "AbdoSegParameterNode"} <= classes
    # The heavy packages are imported where they are used, inside functions; torch never (it runs in the command's process).
    inner = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {"PyTorchUtils", "SampleData"} <= inner and "torch" not in inner


def test_the_scene_layer_imports_only_slicer_mrml_and_logic_classes():
    for path in sorted((MODULE_DIR / "AbdoSegLib" / "scene").glob("*.py")):
        source = path.read_text()
        imported = {name.split(".")[0] for name in module_level_imports(ast.parse(source))}
        assert not imported & {"qt", "ctk", "slicer.app"}, path.name
        for forbidden in ("slicer.app", "slicer.mrmlScene", "slicer.modules", "import qt", "import ctk"):
            assert forbidden not in re.sub(r'"""[\s\S]*?"""', "", source), (path.name, forbidden)


def vtk_matrix(array: np.ndarray):
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix
