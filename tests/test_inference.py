import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.config import Params
from pipeline.inference import predict
from pipeline.model import build_network, describe
from pipeline.volumes import read_image, to_metatensor
from tests.conftest import HIPPOCAMPUS_LABELS, synthetic_pair, write_volume


class OracleOfBrightness(torch.nn.Module):
    """Labels voxels over one deviation above the mean 1: a fixed 'network' whose correct output is known."""

    def forward(self, x):
        return torch.cat([1 - x, x - 1, torch.full_like(x, -10)], dim=1)


def _description(spacing=None, crop=False, patch=(32, 32, 32)):
    plan = {
        "orientation": "RAS",
        "spacing": spacing or [1.0, 1.0, 1.0],
        "crop_foreground": crop,
        "intensity": {"scheme": "zscore"},
    }
    return describe(Params(), HIPPOCAMPUS_LABELS, "MRI", plan, list(patch))


def _predict(network, description, path):
    return predict(network, description, to_metatensor(read_image(path)), torch.device("cpu"))


@pytest.mark.parametrize("crop", [False, True], ids=["whole", "cropped"])
@pytest.mark.parametrize("spacing", [None, [1.5, 1.5, 2.0]])
@pytest.mark.parametrize(
    "axcodes_affine", [np.diag([1.0, 1.0, 1.0, 1.0]), np.diag([-0.9, -0.9, 1.3, 1.0])], ids=["RAS", "LPS"]
)
def test_prediction_lands_on_the_input_grid(tmp_path, spacing, axcodes_affine, crop):
    image, truth = synthetic_pair(shape=(45, 38, 29))
    image[:5], truth[:5] = 0, 0  # a zero border for the foreground crop to remove
    affine = axcodes_affine.copy()
    affine[:3, 3] = [10, -20, 5]
    path = write_volume(tmp_path / "input.nii.gz", image, affine)
    native = np.abs(np.diag(axcodes_affine))[:3].tolist()
    labels = _predict(OracleOfBrightness(), _description(spacing or native, crop), path)
    assert labels.shape == nib.load(path).shape and labels.dtype == np.uint8
    # a correct model stays correct after reorientation, resampling and the way back
    agreement = ((labels > 0) == (truth > 0)).mean()
    assert agreement > (0.97 if spacing else 0.999)


def test_a_volume_smaller_than_the_patch_is_padded_and_cropped_back(tmp_path):
    image, _ = synthetic_pair(shape=(20, 24, 18))
    path = write_volume(tmp_path / "small.nii.gz", image)
    network = build_network(_description()["network"]).eval()
    labels = _predict(network, _description(), path)
    assert labels.shape == (20, 24, 18) and set(np.unique(labels)) <= {0, 1, 2}
