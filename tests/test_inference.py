import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.config import Params
from pipeline.inference import predict_file
from pipeline.model import build_network, describe
from tests.conftest import HIPPOCAMPUS_LABELS, synthetic_pair, write_volume


class OracleOfBrightness(torch.nn.Module):
    """Labels bright voxels 1: a fixed 'network' whose correct output is known."""

    def forward(self, x):
        return torch.cat([-x, x, torch.full_like(x, -10)], dim=1)


def _description(spacing=None, orientation="RAS", patch=(32, 32, 32)):
    params = Params.model_validate({"preprocess": {"spacing": spacing, "orientation": orientation}, "train": {"patch_size": list(patch)}})
    return describe(params, HIPPOCAMPUS_LABELS, "MRI")


@pytest.mark.parametrize("spacing", [None, [1.5, 1.5, 2.0]])
@pytest.mark.parametrize("axcodes_affine", [np.diag([1.0, 1.0, 1.0, 1.0]), np.diag([-0.9, -0.9, 1.3, 1.0])], ids=["RAS", "LPS"])
def test_prediction_lands_on_the_input_grid(tmp_path, spacing, axcodes_affine):
    image, truth = synthetic_pair(shape=(45, 38, 29))
    affine = axcodes_affine.copy()
    affine[:3, 3] = [10, -20, 5]
    path = write_volume(tmp_path / "input.nii.gz", image, affine)
    labels = predict_file(OracleOfBrightness(), _description(spacing), path, torch.device("cpu"))
    assert labels.shape == nib.load(path).shape and labels.dtype == np.uint8
    # a correct model stays correct after reorientation, resampling and the way back
    agreement = ((labels > 0) == (truth > 0)).mean()
    assert agreement > (0.97 if spacing else 0.999)


def test_a_volume_smaller_than_the_patch_is_padded_and_cropped_back(tmp_path):
    image, _ = synthetic_pair(shape=(20, 24, 18))
    path = write_volume(tmp_path / "small.nii.gz", image)
    network = build_network(_description()["network"]).eval()
    labels = predict_file(network, _description(), path, torch.device("cpu"))
    assert labels.shape == (20, 24, 18) and set(np.unique(labels)) <= {0, 1, 2}
