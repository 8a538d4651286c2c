"""Exports give the labels ``medseg segment`` gives: the MONAI bundle run by MONAI's own runner (exactly: it runs
medseg's one predictor), and the TorchScript and ONNX networks run through the same sliding window, on real
fixture cases."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnxruntime
import pytest
import torch
from monai.bundle import ConfigParser

from pipeline.config import Params
from pipeline.data.transforms import IMAGE, prepare
from pipeline.data.volumes import read_image, to_metatensor
from pipeline.errors import ModelError
from pipeline.export import export
from pipeline.inference.predictor import predict, sliding_window_logits
from pipeline.inference.segment import segment
from pipeline.networks.description import Postprocess
from pipeline.networks.model import build_network, describe, load_model, save_model
from tests.conftest import HIPPOCAMPUS_FIXTURE, HIPPOCAMPUS_LABELS, write_volume

CASE = HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_177.nii.gz"
# a plan that resamples the 1 mm fixture both ways, so that Spacingd and its inverse really interpolate
RESAMPLING_PLAN = {
    "orientation": "RAS",
    "spacing": [1.3, 0.85, 1.1],
    "crop_foreground": True,
    "intensity": {"scheme": "zscore"},
}
CT_PLAN = {
    "orientation": "RAS",
    "spacing": [1.0, 1.0, 1.0],
    "crop_foreground": False,
    "intensity": {"scheme": "clip_zscore", "low": 50.0, "high": 600.0, "mean": 250.0, "std": 90.0},
}


def _model(path: Path, train: dict, plan: dict, label_values=None, slice_axis=None, largest=()) -> Path:
    params = Params.model_validate({"train": {"channels": [4, 8, 16], "num_res_units": 1, **train}})
    torch.manual_seed(0)
    description = describe(params, HIPPOCAMPUS_LABELS, "MRI", plan, params.train.patch_size, label_values, slice_axis)
    if largest:  # the post-processing training decides on its validation cases
        description.postprocess = Postprocess(largest_component_classes=list(largest))
    save_model(path, build_network(description.network), description)
    return path


def _labels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


@pytest.fixture
def inputs(tmp_path) -> Path:
    """The real case, and the same case stored LPS (other voxel order, same anatomy)."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / CASE.name).write_bytes(CASE.read_bytes())
    original = nib.load(CASE)
    flipped = np.asanyarray(original.dataobj)[::-1, ::-1]
    write_volume(folder / "lps_case.nii.gz", flipped, np.diag([-1, -1, 1, 1]) @ original.affine)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True], ids=["plain", "tta"])
def test_the_bundle_run_by_monai_gives_exactly_the_labels_of_segment(tmp_path, inputs, tta):
    model = _model(
        tmp_path / "model.pt", {"patch_size": [32, 48, 32]}, RESAMPLING_PLAN, label_values=[0, 4, 9], largest=[1]
    )
    bundle = tmp_path / "bundle"
    export(model, "bundle", bundle)
    assert segment([inputs], tmp_path / "segment", model, tta=tta) == []
    assert segment([inputs], tmp_path / "segment_bundle", bundle, tta=tta) == []  # --model accepts the bundle folder

    # MONAI's own runner, offline, from the bundle folder as its README says (no schema check: it downloads)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    command += ["--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "monai"), "--tta", str(tta)]
    result = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    for name in (CASE.name, "lps_case.nii.gz"):
        expected = _labels(tmp_path / "segment" / name)
        assert set(np.unique(expected)) == {0, 4, 9}  # every class present: the comparison means something
        np.testing.assert_array_equal(_labels(tmp_path / "monai" / name), expected)
        np.testing.assert_array_equal(_labels(tmp_path / "segment_bundle" / name), expected)
        written, original = nib.load(tmp_path / "monai" / name), nib.load(inputs / name)
        assert written.get_data_dtype() == np.uint8
        np.testing.assert_allclose(written.affine, original.affine, atol=1e-6)


def test_the_bundle_describes_the_model_as_monai_expects(tmp_path):
    model = _model(tmp_path / "model.pt", {"patch_size": [32, 48, 32]}, RESAMPLING_PLAN, largest=[2])
    written = export(model, "bundle", tmp_path / "bundle")
    assert {p.relative_to(tmp_path / "bundle").as_posix() for p in written} == {
        "configs/metadata.json",
        "configs/inference.json",
        "models/model.pt",
        "docs/README.md",
    }
    metadata = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "name", "description", "authors", "network_data_format"):
        assert metadata[key]
    image = metadata["network_data_format"]["inputs"]["image"]
    assert image["modality"] == "MR" and image["num_channels"] == 1 and image["spatial_shape"] == [32, 48, 32]
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == HIPPOCAMPUS_LABELS
    assert metadata["medseg"]["preprocess"]["spacing"] == [1.3, 0.85, 1.1]
    # the weights are a plain state dict, as MONAI's CheckpointLoader loads them
    state = torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True)
    network, _ = load_model(model)
    assert state.keys() == network.state_dict().keys()
    parser = ConfigParser()
    parser.read_config(tmp_path / "bundle" / "configs" / "inference.json")
    assert parser["network_def"]["_target_"] == "monai.networks.nets.unet.UNet"
    assert parser.get_parsed_content("network_def").state_dict().keys() == network.state_dict().keys()
    assert "preprocessing" not in parser.config  # the bundle runs medseg's predictor; nothing restated
    readme = (tmp_path / "bundle" / "docs" / "README.md").read_text()
    assert "resample to [1.3, 0.85, 1.1] mm" in readme and "largest connected component kept for classes [2]" in readme


def test_a_slice_model_bundle_labels_like_segment(tmp_path, inputs):
    """A 2D network over volumes, one file through ``datalist``, MONAI's in-process runner."""
    from monai.bundle import run

    model = _model(tmp_path / "model.pt", {"patch_size": [32, 48]}, RESAMPLING_PLAN, slice_axis=2)
    bundle = tmp_path / "bundle"
    export(model, "bundle", bundle)
    assert segment([inputs / CASE.name], tmp_path / "segment", model) == []
    run(
        config_file=str(bundle / "configs" / "inference.json"),
        bundle_root=str(bundle),
        datalist=[str(inputs / CASE.name)],
        output_dir=str(tmp_path / "monai"),
    )
    expected = _labels(tmp_path / "segment" / CASE.name)
    assert len(np.unique(expected)) == 3
    np.testing.assert_array_equal(_labels(tmp_path / "monai" / CASE.name), expected)


def test_the_paper_unet_is_refused_as_a_bundle_but_not_as_a_network(tmp_path):
    model = _model(
        tmp_path / "model.pt", {"network": "unet_paper", "norm": "none", "patch_size": [44, 44, 44]}, CT_PLAN
    )
    with pytest.raises(ModelError, match="not a MONAI network.*--format torchscript or --format onnx"):
        export(model, "bundle", tmp_path / "bundle")
    network, description = load_model(model)
    export(model, "torchscript", tmp_path / "ts")
    traced = torch.jit.load(tmp_path / "ts" / "model.ts")
    tile = torch.randn(2, 1, 44, 44, 44)
    with torch.no_grad():
        torch.testing.assert_close(traced(tile), network(tile))
    exported = json.loads((tmp_path / "ts" / "model.json").read_text())["export"]
    assert exported["input"]["shape"] == ["batch", 1, 44, 44, 44]
    assert exported["output"]["shape"] == ["batch", 3, *network(tile[:1]).shape[2:]]


def test_unknown_formats_and_folders_that_are_not_bundles_are_named(tmp_path, untrained_model):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="--format 'tflite': unknown export format"):
        export(untrained_model, "tflite", tmp_path / "out")
    with pytest.raises(ModelError, match="not a model bundle"):
        load_model(tmp_path)


def _prepared_case(description) -> torch.Tensor:
    image = to_metatensor(read_image(CASE))
    return prepare(description.preprocess, (IMAGE,))({IMAGE: image})[IMAGE][None]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_network_through_the_same_window_labels_like_pytorch(tmp_path, untrained_model, fmt):
    network, description = load_model(untrained_model)
    written = export(untrained_model, fmt, tmp_path / fmt)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(written[0]), providers=["CPUExecutionProvider"])

        def predictor(patches: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"image": patches.numpy()})[0])
    else:
        predictor = torch.jit.load(written[0])

    image = to_metatensor(read_image(CASE))
    expected = predict(network, description, image, torch.device("cpu")).labels
    assert len(np.unique(expected)) == 3
    np.testing.assert_array_equal(predict(predictor, description, image, torch.device("cpu")).labels, expected)
    # the logits themselves: float32 arithmetic in another order, nothing more
    prepared = _prepared_case(description)
    torch.testing.assert_close(
        sliding_window_logits(predictor, prepared, description),
        sliding_window_logits(network, prepared, description),
        rtol=1e-4,
        atol=1e-4,
    )
    # dynamic spatial axes: a patch of another size (multiples of the downsampling) runs too
    other = torch.randn(1, 1, 16, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(predictor(other), network(other), rtol=1e-4, atol=1e-4)
    exported = json.loads(written[1].read_text())
    assert exported["labels"] == HIPPOCAMPUS_LABELS and exported["preprocess"] == description.preprocess
    assert exported["export"]["input"]["shape"] == ["batch", 1, "x", "y", "z"]


@pytest.mark.slow
def test_the_command_writes_the_export_and_names_each_file(tmp_path, untrained_model):
    command = [sys.executable, "-m", "pipeline", "export", str(untrained_model), "--format", "torchscript"]
    result = subprocess.run([*command, "-o", str(tmp_path / "ts")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "wrote",
        str(tmp_path / "ts" / "model.ts"),
        "wrote",
        str(tmp_path / "ts" / "model.json"),
    ]
