"""Training augmentation: every random step, alone at probability 1, changes the patch; labels keep their values
and move only with the spatial steps; with nothing firing, a patch is an exact crop."""

import numpy as np
import pytest
import torch

from pipeline.config import AugmentationConfig
from pipeline.training.augment import elastic_field, intensity, sample_patch, sampling_matrix
from tests.conftest import synthetic_pair

STEPS = list(AugmentationConfig.model_fields)
SPATIAL = ("elastic_prob", "affine_prob", "flip_prob")


def _only(step: str | None) -> AugmentationConfig:
    return AugmentationConfig(**{name: float(name == step) for name in STEPS})


def _case(dims: int) -> dict[str, torch.Tensor]:
    image, label = synthetic_pair(shape=(32, 40, 24))
    if dims == 2:
        image, label = image[..., 12], label[..., 12]
    image = (image - image.mean()) / image.std()
    return {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(label)[None].float()}


def _augment(case, step, dims, seed=0):
    generator = torch.Generator().manual_seed(seed)
    aug = _only(step)
    patch_size = list(case["image"].shape[1:])
    matrix = sampling_matrix(dims, aug, generator)
    field = elastic_field(patch_size, generator) if aug.elastic_prob else None
    patch = sample_patch(case, torch.zeros(dims, dtype=torch.long), patch_size, matrix, field, nearest={"label"})
    patch["image"] = intensity(patch["image"], aug, generator)
    return patch


@pytest.mark.parametrize("dims", [2, 3])
def test_with_nothing_firing_a_patch_is_an_exact_crop(dims):
    case = _case(dims)
    start = torch.tensor([3, 5, 2][:dims])
    size = [20, 24, 16][:dims]
    patch = sample_patch(case, start, size, torch.eye(dims), None, nearest={"label"})
    crop = (slice(None), *[slice(int(s), int(s) + n) for s, n in zip(start, size)])
    for key in case:
        assert torch.allclose(patch[key], case[key][crop], atol=1e-5), key


def test_outside_the_case_is_zero():
    case = _case(3)
    patch = sample_patch(case, torch.tensor([-4, 0, 0]), [8, 8, 8], torch.eye(3), None, nearest={"label"})
    assert patch["image"][:, :4].abs().max() < 1e-5 and torch.all(patch["label"][:, :4] == 0)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("step", STEPS)
def test_each_step_changes_the_patch_and_keeps_label_values(step, dims):
    case = _case(dims)
    out = _augment(case, step, dims)
    assert out["image"].shape == case["image"].shape
    assert not torch.allclose(out["image"], case["image"]), f"{step} left the image as it was"
    assert set(np.unique(out["label"].numpy())) <= {0.0, 1.0, 2.0}
    assert torch.equal(out["label"], case["label"]) != (step in SPATIAL), "labels move with the image, and only then"


def test_the_same_generator_seed_gives_the_same_patch():
    case = _case(3)
    for step in STEPS:
        first, second = _augment(case, step, 3, seed=7), _augment(case, step, 3, seed=7)
        assert all(torch.equal(first[k], second[k]) for k in first), step


def test_mirroring_alone_flips_image_and_label_together():
    case = _case(3)
    generator = torch.Generator().manual_seed(0)
    matrix = sampling_matrix(3, _only("flip_prob"), generator)  # flip_prob 1: every axis mirrored
    assert torch.equal(matrix, -torch.eye(3))
    patch = sample_patch(case, torch.zeros(3, dtype=torch.long), list(case["image"].shape[1:]), matrix, None, {"label"})
    for key in case:
        assert torch.allclose(patch[key], case[key].flip(1, 2, 3), atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_the_sampling_grid_and_the_plain_crop_agree_where_both_apply(dims):
    case = _case(dims)
    start, size = torch.tensor([-3, 5, 2][:dims]), [20, 24, 16][:dims]
    mirrored = torch.diag(torch.tensor([-1.0, 1.0, -1.0][:dims]))
    cropped = sample_patch(case, start, size, mirrored, None, nearest={"label"})
    sampled = sample_patch(
        case, start, size, mirrored, torch.zeros(dims, *size), nearest={"label"}
    )  # a field: the grid
    for key in case:
        assert torch.allclose(cropped[key], sampled[key], atol=1e-4), key
