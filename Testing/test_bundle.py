"""The model bundle: a safetensors file with weights and metadata, loaded safely or refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.model.bundle import METADATA_KEY, load_bundle, read_metadata, save_bundle
from AbdoSegLib.model.bundle_schema import SINGLE_STAGE_VERSION
from AbdoSegLib.model.preprocessing import Preprocessing
from AbdoSegLib.model.vnet import VNet, VNetConfig
from AbdoSegLib.organs import label_table
from conftest import TINY_CONFIG, TINY_PATCH, TINY_PREPROCESSING


def _metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()[METADATA_KEY])


def _state(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def test_round_trip_keeps_weights_metadata_and_checksum(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        network = VNet(VNetConfig(width=4, depth=2, convs_per_stage=(1, 2, 1)))
        # non-default values everywhere, also in the norm and PReLU parameters
        for parameter in network.parameters():
            parameter.data.normal_()
    path = tmp_path / "model.safetensors"
    spec = Preprocessing((1.5, 1.5, 2.0), (-150.0, 250.0))
    training = {"cases": ["a", "b"], "epochs": 3}
    validation = {"dice": {"liver": 0.91}}
    sha = save_bundle(path, network, spec, (64, 48, 32), "unit-test", "2024-06-01T12:00:00Z", overlap=0.5, training=training, validation=validation)

    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    bundle = load_bundle(path)
    assert bundle.sha256 == sha
    assert bundle.path == path
    assert bundle.model_id == f"unit-test@{sha[:12]}"
    assert not bundle.network.training  # eval mode
    assert bundle.network.config == network.config
    saved, loaded = network.state_dict(), bundle.network.state_dict()
    assert saved.keys() == loaded.keys()
    for key in saved:
        assert torch.equal(saved[key], loaded[key]), key
    assert bundle.preprocessing == spec
    assert bundle.patch_size == (64, 48, 32)
    assert bundle.overlap == 0.5
    meta = bundle.metadata
    assert meta["format_version"] == SINGLE_STAGE_VERSION
    assert meta["name"] == "unit-test" and meta["created"] == "2024-06-01T12:00:00Z"
    assert meta["architecture"] == {"name": "vnet", "config": network.config.to_dict()}
    assert meta["labels"] == label_table()
    assert meta["training"] == training and meta["validation"] == validation
    assert read_metadata(path) == meta
    # same outputs: the loaded network is the saved network
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(bundle.network(x), network.eval()(x), rtol=0, atol=0)


def test_a_half_bundle_stores_float16_and_loads_into_float32(tmp_path):
    """Saved with half, every weight is float16 in the file (the weights alone take half the bytes), loads as
    exactly the float32 weights rounded to float16, and the network's outputs barely move."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        network = VNet(VNetConfig(width=8, depth=2, convs_per_stage=(1, 2, 1))).eval()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    for path, as_half in ((full, False), (half, True)):
        save_bundle(path, network, TINY_PREPROCESSING, TINY_PATCH, "unit-test", "2026-12-01", half=as_half)
    assert {tensor.dtype for tensor in _state(half).values()} == {torch.float16}
    weight_bytes = sum(t.numel() * t.element_size() for t in network.state_dict().values())
    assert abs(full.stat().st_size - half.stat().st_size - weight_bytes // 2) < 100  # the headers differ a little
    loaded = load_bundle(half).network
    for key, value in network.state_dict().items():
        assert loaded.state_dict()[key].dtype == torch.float32
        assert torch.equal(loaded.state_dict()[key], value.half().float()), key
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), network(x), rtol=0, atol=2e-2)


def test_a_weight_beyond_float16_is_not_saved_as_half(tmp_path):
    network = VNet(TINY_CONFIG)
    key, weight = next(iter(network.named_parameters()))
    with torch.no_grad():
        weight.view(-1)[0] = 1e5
    path = tmp_path / "half.safetensors"
    with pytest.raises(AbdoSegError, match=r"was not written: weights\['.*'\] exceed float16's range \(65504\)"):
        save_bundle(path, network, TINY_PREPROCESSING, TINY_PATCH, "unit-test", "2026-12-01", half=True)
    assert not path.exists()
    save_bundle(path, network, TINY_PREPROCESSING, TINY_PATCH, "unit-test", "2026-12-01")  # float32 holds it
    assert float(load_bundle(path).network.state_dict()[key].view(-1)[0]) == 1e5


def test_fixture_bundle_loads(tiny_model_bundle, tiny_bundle_path):
    assert tiny_model_bundle.network.config == TINY_CONFIG
    assert tiny_model_bundle.preprocessing == TINY_PREPROCESSING
    assert tiny_model_bundle.patch_size == TINY_PATCH
    assert tiny_model_bundle.sha256 == hashlib.sha256(tiny_bundle_path.read_bytes()).hexdigest()


def test_patch_size_not_divisible_is_not_saved(tmp_path):
    with pytest.raises(ValueError):
        save_bundle(tmp_path / "m.safetensors", VNet(TINY_CONFIG), TINY_PREPROCESSING, (30, 32, 32), "x", "now")
    assert list(tmp_path.iterdir()) == []


# --- refusals -------------------------------------------------------------------------


def _assert_refused(path: Path, *phrases: str) -> str:
    with pytest.raises(AbdoSegError) as caught:
        load_bundle(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for phrase in phrases:
        assert phrase in message, message
    return message


def _rewrite(source: Path, target: Path, change=None, raw_metadata: str | None = None, state=None) -> Path:
    """A copy of ``source`` with its metadata changed (or replaced by raw text) and/or other weights."""
    metadata = _metadata(source)
    if change is not None:
        change(metadata)
    text = raw_metadata if raw_metadata is not None else json.dumps(metadata)
    save_file(state if state is not None else _state(source), str(target), metadata={METADATA_KEY: text})
    return target


def test_missing_file_is_refused(tmp_path):
    _assert_refused(tmp_path / "absent.safetensors", "does not exist")


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(11).bytes(4096))
    _assert_refused(path)


@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_truncated_bundle_is_refused(tmp_path, tiny_bundle_path, fraction):
    data = tiny_bundle_path.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: int(len(data) * fraction)])
    _assert_refused(path)


def test_safetensors_without_abdoseg_metadata_is_refused(tmp_path, tiny_bundle_path):
    path = tmp_path / "plain.safetensors"
    save_file(_state(tiny_bundle_path), str(path), metadata={"format": "pt"})
    _assert_refused(path, METADATA_KEY)


def test_other_format_version_is_refused(tmp_path, tiny_bundle_path):
    path = _rewrite(tiny_bundle_path, tmp_path / "v3.safetensors", lambda m: m.update(format_version=3))
    _assert_refused(path, "version 3")


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["labels"].reverse(),  # same organs, other ids
        lambda m: m["labels"].pop(),  # no spleen
        lambda m: m["labels"].append({"label": 5, "name": "pancreas"}),
        lambda m: m["labels"][1].update(name="left_kidney") or m["labels"][2].update(name="right_kidney"),  # sides swapped
    ],
    ids=["reordered", "missing_organ", "extra_organ", "kidneys_swapped"],
)
def test_other_label_table_is_refused(tmp_path, tiny_bundle_path, change):
    path = _rewrite(tiny_bundle_path, tmp_path / "labels.safetensors", change)
    _assert_refused(path, "labels")


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path, tiny_bundle_path):
    wider = VNet(VNetConfig(width=8, depth=2, convs_per_stage=(1, 1, 1)))
    state = {key: value.contiguous() for key, value in wider.state_dict().items()}
    path = _rewrite(tiny_bundle_path, tmp_path / "shapes.safetensors", state=state)
    _assert_refused(path, "architecture")


def test_weights_with_a_missing_tensor_are_refused(tmp_path, tiny_bundle_path):
    state = _state(tiny_bundle_path)
    state.pop("head.weight")
    path = _rewrite(tiny_bundle_path, tmp_path / "missing.safetensors", state=state)
    _assert_refused(path, "architecture")


def test_shape_mismatch_message_says_which_tensor(tmp_path, tiny_bundle_path):
    """'does not fit its architecture (Error(s) in loading state_dict for VNet:)' tells a user
    nothing: the message should name a tensor that does not fit."""
    wider = VNet(VNetConfig(width=8, depth=2, convs_per_stage=(1, 1, 1)))
    state = {key: value.contiguous() for key, value in wider.state_dict().items()}
    path = _rewrite(tiny_bundle_path, tmp_path / "shapes.safetensors", state=state)
    message = _assert_refused(path)
    assert any(key in message for key in state), message


def test_unknown_architecture_is_refused(tmp_path, tiny_bundle_path):
    path = _rewrite(tiny_bundle_path, tmp_path / "unet.safetensors", lambda m: m["architecture"].update(name="unet"))
    _assert_refused(path, "unet")


@pytest.mark.parametrize("raw", ["{not json", "[1, 2, 3]", '"a string"', "null"], ids=["invalid_json", "list", "string", "null"])
def test_damaged_metadata_is_refused(tmp_path, tiny_bundle_path, raw):
    path = _rewrite(tiny_bundle_path, tmp_path / "damaged.safetensors", raw_metadata=raw)
    _assert_refused(path)
