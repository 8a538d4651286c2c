import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.config import PreprocessConfig
from pipeline.data.plan import case_fingerprint, plan_preprocessing


def _image(array: np.ndarray, spacing=(1.0, 1.0, 1.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _fingerprint(spacing, shape=(20, 30, 40), foreground=(0.0, 100.0)):
    return {
        "spacing": list(spacing),
        "shape": list(shape),
        "class_voxels": {},
        "foreground_sample": list(np.linspace(*foreground, 201)),
    }


def test_fingerprint_counts_classes_and_samples_the_foreground_only():
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[0, :2] = 1
    labels[3] = 2
    pixels = np.where(labels > 0, 500.0, -1000.0).astype(np.float32)
    fingerprint = case_fingerprint("case", _image(pixels, (0.5, 0.6, 2.0)), _image(labels))
    assert fingerprint["class_voxels"] == {"0": 78, "1": 12, "2": 30}
    assert set(fingerprint["foreground_sample"]) == {500.0}
    assert fingerprint["spacing"] == [0.5, 0.6, 2.0] and fingerprint["shape"] == [6, 5, 4]
    assert case_fingerprint("case", _image(pixels), _image(labels)) == case_fingerprint(
        "case", _image(pixels), _image(labels)
    )


def test_fingerprint_puts_axes_in_world_order():
    """A volume stored z-first (sagittal-like) reports spacing per world axis, as after reorientation."""
    permuted = (0, 0, 1, 1, 0, 0, 0, 1, 0)  # voxel axis 0 runs along world y, 1 along z, 2 along x
    image = _image(np.zeros((4, 5, 6), np.float32), (0.5, 0.6, 2.0), permuted)
    fingerprint = case_fingerprint("case", image, _image(np.zeros((4, 5, 6), np.uint8), (0.5, 0.6, 2.0), permuted))
    assert fingerprint["spacing"] == [2.0, 0.5, 0.6] and fingerprint["shape"] == [4, 6, 5]


def test_target_spacing_is_the_median_unless_fixed():
    fingerprints = [_fingerprint((1, 1, 3)), _fingerprint((0.8, 0.8, 5)), _fingerprint((0.7, 0.7, 2.5))]
    assert plan_preprocessing(fingerprints, "MRI", PreprocessConfig())["spacing"] == [0.8, 0.8, 3.0]
    assert plan_preprocessing(fingerprints, "MRI", PreprocessConfig(spacing=[1, 1, 1]))["spacing"] == [1, 1, 1]


def test_ct_is_clipped_to_foreground_percentiles_then_standardised():
    plan = plan_preprocessing([_fingerprint((1, 1, 1), foreground=(-100, 300))], "CT", PreprocessConfig())
    intensity = plan["intensity"]
    assert intensity["scheme"] == "clip_zscore"
    assert intensity["low"] == pytest.approx(-98.0) and intensity["high"] == pytest.approx(298.0)
    assert intensity["mean"] == pytest.approx(100.0, abs=1)
    assert plan_preprocessing([_fingerprint((1, 1, 1))], "MRI", PreprocessConfig())["intensity"] == {"scheme": "zscore"}


def test_a_fixed_window_maps_to_minus_one_one():
    intensity = plan_preprocessing(
        [_fingerprint((1, 1, 1))], "CT", PreprocessConfig(normalization="window", window=[-160, 240])
    )["intensity"]
    assert (intensity["low"] - intensity["mean"]) / intensity["std"] == -1
    assert (intensity["high"] - intensity["mean"]) / intensity["std"] == 1
