import itertools

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.config import Params
from pipeline.data.volumes import read_image, to_metatensor
from pipeline.inference import predictor as inference
from pipeline.inference.predictor import (
    predict,
    sliding_window_probabilities,
    stitching_device,
)
from pipeline.networks.model import build_network, describe
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
    return predict(network, description, to_metatensor(read_image(path)), torch.device("cpu")).labels


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
    network = build_network(_description().network).eval()
    labels = _predict(network, _description(), path)
    assert labels.shape == (20, 24, 18) and set(np.unique(labels)) <= {0, 1, 2}


class SymmetricBlur(torch.nn.Module):
    """Logits from a mirror-symmetric 3x3x3 box filter: a network whose output mirrors with its input."""

    def forward(self, x):
        blurred = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=True)
        return torch.cat([-blurred, blurred, 2 * x - blurred], dim=1)


def _random_conv(spatial_dims, seed=0):
    """Not mirror-symmetric: random 3x3(x3) kernels."""
    torch.manual_seed(seed)
    conv = (torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d)(1, 3, 3, padding=1)
    return conv.eval()


def _by_hand(network, x, axes_pool):
    flips = [list(a) for n in range(len(axes_pool) + 1) for a in itertools.combinations(axes_pool, n)]
    with torch.no_grad():
        return sum(torch.softmax(network(x.flip(a)), 1).flip(a) for a in flips) / len(flips), len(flips)


def test_tta_averages_exactly_the_softmax_of_the_eight_mirrorings():
    description = _description(patch=(16, 12, 10))
    image = torch.randn(1, 1, 16, 12, 10)  # one window: no blending, no padding
    network = _random_conv(3)
    expected, n_flips = _by_hand(network, image, (2, 3, 4))
    mirrored = sliding_window_probabilities(network, image, description, tta=True)
    plain = sliding_window_probabilities(network, image, description, tta=False)
    assert n_flips == 8
    torch.testing.assert_close(mirrored, expected, rtol=1e-5, atol=1e-6)
    assert (mirrored - plain).abs().max() > 1e-2, "the random network is not mirror-symmetric: TTA must change it"


def test_tta_of_a_2d_network_over_slices_flips_only_the_two_in_plane_axes():
    description = _description(patch=(16, 12))
    description.slice_axis, description.network.spatial_dims = 2, 2
    volume = torch.randn(1, 1, 16, 12, 5)
    network = _random_conv(2)
    mirrored = sliding_window_probabilities(network, volume, description, tta=True)
    for z in range(volume.shape[-1]):
        expected, n_flips = _by_hand(network, volume[..., z], (2, 3))
        torch.testing.assert_close(mirrored[..., z], expected, rtol=1e-5, atol=1e-6)
    assert n_flips == 4


@pytest.mark.parametrize(
    "network, shape, patch",
    [(OracleOfBrightness(), (45, 38, 29), (16, 16, 16)), (SymmetricBlur(), (24, 20, 18), (24, 20, 18))],
    ids=["pointwise, many windows", "symmetric blur, one window"],
)
def test_tta_on_a_mirror_symmetric_network_gives_the_same_result(tmp_path, network, shape, patch):
    image, _ = synthetic_pair(shape=shape)
    path = write_volume(tmp_path / "input.nii.gz", image)
    description, volume = _description(patch=patch), to_metatensor(read_image(path))
    plain = predict(network, description, volume, torch.device("cpu"), tta=False, probabilities=True)
    mirrored = predict(network, description, volume, torch.device("cpu"), tta=True, probabilities=True)
    np.testing.assert_array_equal(mirrored.labels, plain.labels)
    # uint8 probabilities: at most a rounding step
    assert np.abs(mirrored.probabilities.astype(int) - plain.probabilities).max() <= 1


def test_full_volume_buffers_keep_their_small_dtypes(tmp_path, monkeypatch):
    """The model-grid probabilities reach the resampling as float16; labels and probabilities come back as uint8."""
    seen = []
    resample = inference.on_input_grid
    monkeypatch.setattr(
        inference, "on_input_grid", lambda grid, *args: seen.append(grid.dtype) or resample(grid, *args)
    )
    image, truth = synthetic_pair(shape=(40, 36, 30))
    path = write_volume(tmp_path / "input.nii.gz", image)
    labels, probabilities = predict(
        OracleOfBrightness(),
        _description(spacing=[1.5, 1.5, 2.0]),
        to_metatensor(read_image(path)),
        torch.device("cpu"),
        probabilities=True,
    )
    assert seen == [torch.float16]
    assert labels.dtype == probabilities.dtype == np.uint8
    assert labels.shape == truth.shape and probabilities.shape == (3, *truth.shape)
    totals = probabilities.sum(axis=0, dtype=int)
    assert totals.min() >= 255 - 2 and totals.max() <= 255 + 2  # each voxel's probabilities sum to 1 (x 255)
    assert (np.argmax(probabilities, axis=0) == labels).mean() > 0.999


def test_the_accumulation_buffers_leave_a_gpu_that_cannot_hold_them(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * gib, 80 * gib))
    cuda = torch.device("cuda")
    assert stitching_device((200, 200, 200), 14, cuda) == cuda  # 0.5 GB of buffers
    assert stitching_device((512, 512, 600), 14, cuda) == torch.device("cpu")  # 10 GB
    assert stitching_device((512, 512, 600), 14, torch.device("cpu")) == torch.device("cpu")
