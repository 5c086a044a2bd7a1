"""A model bundle is checked as a schema when it is read (``model.bundle_schema``): every metadata field's type and
range, and finite weights. A bundle outside it is refused by ``load_bundle``, ``abdoseg info`` and ``abdoseg segment``
with one sentence naming the field and its value, exit code 1, and nothing of the user's touched.

The file-level refusals (missing, truncated, not JSON, format version 3, label table, architecture name, weights of
another shape) are in test_bundle.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from AbdoSegLib.cli import main
from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.model.bundle import load_bundle, save_bundle
from AbdoSegLib.model.preprocessing import Preprocessing
from AbdoSegLib.model.vnet import VNet
from AbdoSegLib.resources import SAMPLE_CT
from conftest import TINY_CONFIG, TINY_PATCH, TINY_PREPROCESSING
from test_bundle import _rewrite, _state
from test_outputs_safety import snapshot

DELETE = object()


def _set(metadata: dict, field: str, value) -> None:
    """Set (or with DELETE remove) the value at a dotted ``field`` of the metadata."""
    *parents, last = field.split(".")
    for key in parents:
        metadata = metadata[key]
    if value is DELETE:
        del metadata[last]
    else:
        metadata[last] = value


def assert_refused_everywhere(path: Path, folder: Path, *phrases: str, capsys) -> None:
    """load_bundle raises AbdoSegError, info and segment exit 1 with one line; ``folder`` is unchanged."""
    before = snapshot(folder)
    with pytest.raises(AbdoSegError) as caught:
        load_bundle(path)
    message = str(caught.value)
    for phrase in (str(path), *phrases):
        assert phrase in message, message
    commands = [["info", str(path)], ["segment", str(SAMPLE_CT), "-o", str(folder / "out"), "--model", str(path), "--progress", "none"]]
    for command in commands:
        code = main(command)
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert code == 1, captured.err
        assert lines == [f"abdoseg: error: {message}"], captured.err
        assert captured.out == ""
    assert snapshot(folder) == before


METADATA_CASES = {
    # the cases of issue 14: silently wrong results, a hang, or a traceback
    "hu_window_inverted": ("preprocessing.hu_window", [400.0, -200.0]),
    "hu_window_empty": ("preprocessing.hu_window", [100.0, 100.0]),
    "overlap_one_hangs": ("inference.overlap", 1.0),
    "architecture_a_string": ("architecture", "vnet"),
    "no_preprocessing": ("preprocessing", DELETE),
    "spacing_zero": ("preprocessing.spacing_mm", [0.0, 3.0, 3.0]),
    "spacing_negative": ("preprocessing.spacing_mm", [3.0, -3.0, 3.0]),
    "spacing_a_string": ("preprocessing.spacing_mm", "3"),
    "patch_zero": ("inference.patch_size", [0, 32, 32]),
    "patch_not_divisible": ("inference.patch_size", [30, 32, 32]),
    # the other fields and their ranges
    "hu_window_nan": ("preprocessing.hu_window", [float("nan"), 400.0]),
    "hu_window_one_value": ("preprocessing.hu_window", [-200.0]),
    "hu_window_beyond_ct": ("preprocessing.hu_window", [-200.0, 40000.0]),
    "spacing_in_cm": ("preprocessing.spacing_mm", [30.0, 30.0, 30.0]),
    "spacing_two_values": ("preprocessing.spacing_mm", [3.0, 3.0]),
    "spacing_infinite": ("preprocessing.spacing_mm", [3.0, 3.0, float("inf")]),
    "preprocessing_a_list": ("preprocessing", [3.0, 3.0, 3.0]),
    "no_spacing": ("preprocessing.spacing_mm", DELETE),
    "patch_float": ("inference.patch_size", [32.0, 32, 32]),
    "patch_a_bool": ("inference.patch_size", [True, 32, 32]),
    "patch_absurd": ("inference.patch_size", [512, 512, 512]),
    "patch_four_values": ("inference.patch_size", [32, 32, 32, 32]),
    "overlap_negative": ("inference.overlap", -0.25),
    "overlap_a_string": ("inference.overlap", "0.5"),
    "overlap_false": ("inference.overlap", False),
    "no_overlap": ("inference.overlap", DELETE),
    "no_inference": ("inference", DELETE),
    "format_version_true": ("format_version", True),
    "format_version_a_string": ("format_version", "1"),
    "format_version_float": ("format_version", 1.0),
    "no_format_version": ("format_version", DELETE),
    "no_name": ("name", DELETE),
    "name_a_number": ("name", 7),
    "name_empty": ("name", " "),
    "created_a_number": ("created", 20240601),
    "training_a_list": ("training", ["case_1"]),
    "validation_a_string": ("validation", "good"),
    "no_labels": ("labels", DELETE),
    "no_architecture_config": ("architecture.config", DELETE),
    "in_channels_true": ("architecture.config.in_channels", True),
    "in_channels_three": ("architecture.config.in_channels", 3),
    "num_classes_other": ("architecture.config.num_classes", 3),
    "width_zero": ("architecture.config.width", 0),
    "width_a_string": ("architecture.config.width", "4"),
    "depth_huge": ("architecture.config.depth", 12),
    "kernel_even": ("architecture.config.kernel_size", 4),
    "convs_per_stage_too_few": ("architecture.config.convs_per_stage", [1, 1]),
    "convs_per_stage_zero": ("architecture.config.convs_per_stage", [1, 0, 1]),
    "no_width": ("architecture.config.width", DELETE),
    "unknown_config_key": ("architecture.config.dropout", 0.5),
    "unknown_inference_key": ("inference.test_time_flips", True),
    "unknown_top_level_key": ("postprocessing", {"largest_component": False}),
}


@pytest.mark.parametrize("field, value", METADATA_CASES.values(), ids=METADATA_CASES.keys())
def test_metadata_outside_the_schema_is_one_sentence_naming_the_field(tmp_path, tiny_bundle_path, capsys, field, value):
    path = _rewrite(tiny_bundle_path, tmp_path / "bad.safetensors", lambda metadata: _set(metadata, field, value))
    phrase = f"has no {field}; a bundle needs " if value is DELETE else f"has {field} = {json.dumps(value)}; "
    assert_refused_everywhere(path, tmp_path, phrase, capsys=capsys)


@pytest.mark.parametrize("key, index, value", [("head.weight", ..., float("nan")), ("input_conv.1.weight", 2, float("inf"))],
                         ids=["all_nan", "one_infinite"])
def test_weights_that_are_not_finite_are_refused_naming_the_tensor(tmp_path, tiny_bundle_path, capsys, key, index, value):
    """NaN weights made every organ empty, and segment ended with exit code 0."""
    state = _state(tiny_bundle_path)
    state[key].view(-1)[index] = value
    path = _rewrite(tiny_bundle_path, tmp_path / "bad.safetensors", state=state)
    count = state[key].numel() if index is ... else 1
    assert_refused_everywhere(path, tmp_path, f"has weights['{key}'] = NaN or infinity in {count} of {state[key].numel()} values", capsys=capsys)


def test_values_at_the_edges_of_the_ranges_load(tmp_path, tiny_bundle_path):
    edges = {"preprocessing.spacing_mm": [0.3, 10, 10.0], "preprocessing.hu_window": [-2000, -1990.0],
             "inference.patch_size": [512, 256, 128], "inference.overlap": 0.9, "created": "today"}
    path = _rewrite(tiny_bundle_path, tmp_path / "edges.safetensors", lambda metadata: [_set(metadata, *item) for item in edges.items()])
    bundle = load_bundle(path)
    assert bundle.preprocessing == Preprocessing((0.3, 10.0, 10.0), (-2000.0, -1990.0))
    assert (bundle.patch_size, bundle.overlap) == ((512, 256, 128), 0.9)
    path = _rewrite(tiny_bundle_path, tmp_path / "none.safetensors", lambda metadata: [metadata.pop(key) for key in ("created", "training", "validation")])
    assert load_bundle(path).metadata["name"] == "tiny-test-vnet"


@pytest.mark.parametrize("spec, overlap, phrase", [
    (TINY_PREPROCESSING, 1.0, "inference.overlap = 1.0"),
    (Preprocessing((3.0, 3.0, 3.0), (400.0, -200.0)), 0.25, "preprocessing.hu_window = [400.0, -200.0]"),
], ids=["overlap_one", "hu_window_inverted"])
def test_a_bundle_outside_the_schema_is_not_written(tmp_path, spec, overlap, phrase):
    """What a reader would refuse is refused when written (a training run's export), and no file is left."""
    with pytest.raises(AbdoSegError, match=phrase.replace("[", r"\[")):
        save_bundle(tmp_path / "m.safetensors", VNet(TINY_CONFIG), spec, TINY_PATCH, "x", "now", overlap=overlap)
    assert list(tmp_path.iterdir()) == []

