"""2D training: native 2D images (ISBI 2012 EM slices) and slice-wise training on 3D volumes."""

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.config import Params
from pipeline.data.preprocess import preprocess
from pipeline.data.split import split
from pipeline.errors import ConfigError
from pipeline.inference.segment import segment
from pipeline.networks.model import load_model
from pipeline.networks.unet_paper import output_size
from pipeline.stages.evaluate import evaluate
from pipeline.stages.train import train
from tests.conftest import FIXTURES

ISBI_FIXTURE = FIXTURES / "isbi2012"


def _run(params: Params, dataset, root):
    preprocess(dataset, root / "prep", params.data, params.preprocess)
    split(root / "prep" / "manifest.csv", root / "split.json", params.split, params.seed)
    train(root / "prep", root / "split.json", root / "models", params)
    return evaluate(root / "models" / "model.pt", root / "prep", root / "split.json", root / "reports")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_isbi_slices_train_a_2d_unet_and_segment_pngs_with_their_label_values(isolated):
    params = Params.model_validate(
        {
            "data": {"labels": {0: "membrane", 255: "cell"}, "modality": "EM", "dimensions": 2},
            "preprocess": {"workers": 1, "crop_foreground": False},
            "split": {"n_folds": 3},
            "train": {
                "channels": [4, 8, 16],
                "num_res_units": 1,
                "patch_size": [64, 64],
                "batch_size": 2,
                "epochs": 2,
                "val_every": 1,
            },
        }
    )
    summary = _run(params, ISBI_FIXTURE, isolated)
    assert summary["n_cases"] == 1 and 0 <= summary["dice_cell"] <= 1 and 0 <= summary["pixel_error"] <= 1
    description = load_model(isolated / "models" / "model.pt")[1]
    assert description.network.spatial_dims == 2 and description.label_values == [0, 255]
    assert segment([ISBI_FIXTURE / "images" / "2.png"], isolated / "out", isolated / "models" / "model.pt") == []
    written = sitk.ReadImage(str(isolated / "out" / "2.png"))
    assert written.GetSize() == (128, 128) and set(np.unique(sitk.GetArrayViewFromImage(written))) <= {0, 255}


@pytest.mark.slow
def test_slice_wise_training_on_volumes_segments_whole_volumes(isolated, hippocampus):
    params = Params.model_validate(
        {
            "preprocess": {"workers": 1},
            "split": {"n_folds": 2},
            "train": {
                "mode": "2d",
                "channels": [4, 8, 16],
                "num_res_units": 1,
                "patch_size": [32, 48],
                "batch_size": 4,
                "epochs": 2,
                "val_every": 1,
            },
        }
    )
    summary = _run(params, hippocampus, isolated)
    assert summary["n_cases"] == 3 and 0 <= summary["dice_mean"] <= 1
    description = load_model(isolated / "models" / "model.pt")[1]
    assert description.network.spatial_dims == 2 and description.slice_axis == 2
    history = json.loads((isolated / "models" / "mlflow_run.json").read_text())
    assert history["run_id"]


def test_a_patch_of_the_wrong_rank_is_named(isolated, hippocampus):
    params = Params.model_validate(
        {
            "preprocess": {"workers": 1},
            "split": {"n_folds": 2},
            "train": {"mode": "2d", "patch_size": [32, 48, 32], "epochs": 1},
        }
    )
    with pytest.raises(ConfigError, match=r"train.patch_size: \[32, 48, 32\] does not fit 2D slices"):
        _run(params, hippocampus, isolated)


def test_the_papers_unet_trains_on_weight_maps_and_segments_by_overlap_tile(isolated):
    params = Params.model_validate(
        {
            "data": {"labels": {0: "membrane", 255: "cell"}, "modality": "EM", "dimensions": 2},
            "preprocess": {"workers": 1, "crop_foreground": False, "weight_map": {"w0": 10, "sigma": 5}},
            "split": {"n_folds": 3},
            "train": {
                "network": "unet_paper",
                "norm": "none",
                "channels": [4, 8, 16],
                "patch_size": [76, 76],
                "loss": "weight_map_ce",
            }
            | {"batch_size": 2, "epochs": 2, "val_every": 1},
        }
    )
    summary = _run(params, ISBI_FIXTURE, isolated)
    assert 0 <= summary["dice_cell"] <= 1
    weights = sorted((isolated / "prep" / "weights").glob("*.nii.gz"))
    assert len(weights) == 3 and np.asarray(nib.load(weights[0]).dataobj).max() > 5  # borders between touching cells
    description = load_model(isolated / "models" / "model.pt")[1]
    assert description.network.name == "unet_paper" and description.patch_size == [76, 76]
    assert segment([ISBI_FIXTURE / "images" / "2.png"], isolated / "out", isolated / "models" / "model.pt") == []
    assert sitk.ReadImage(str(isolated / "out" / "2.png")).GetSize() == (128, 128)


@pytest.mark.slow
def test_slice_wise_paper_unet_on_volumes_plans_a_valid_tile(isolated, hippocampus):
    params = Params.model_validate(
        {
            "preprocess": {"workers": 1},
            "split": {"n_folds": 2},
            "train": {"mode": "2d", "network": "unet_paper", "channels": [4, 8, 16], "patch_size": None, "epochs": 1},
        }
    )
    summary = _run(params, hippocampus, isolated)
    assert 0 <= summary["dice_mean"] <= 1
    tile = load_model(isolated / "models" / "model.pt")[1].patch_size
    # the median slice (35 x 50) rounded up to the plan's multiples (of 8, for its 4 stages), output as whole tiles
    assert [output_size(size, depth=2) for size in tile] == [40, 56]


def test_weight_map_ce_without_weight_maps_says_what_to_set():
    with pytest.raises(ValueError, match="needs preprocess.weight_map"):
        Params.model_validate({"train": {"loss": "weight_map_ce"}})
