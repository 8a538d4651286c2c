"""Training augmentation: every random step, alone at probability 1, changes the patch; labels keep their values."""

import numpy as np
import pytest
import torch

from pipeline.config import AugmentationConfig
from pipeline.transforms import IMAGE, LABEL, WEIGHT, training_augmentation
from tests.conftest import synthetic_pair

STEPS = list(AugmentationConfig.model_fields)


def _only(step: str) -> AugmentationConfig:
    return AugmentationConfig(**{name: float(name == step) for name in STEPS})


def _patch(dims: int) -> dict[str, torch.Tensor]:
    image, label = synthetic_pair(shape=(32, 40, 24))
    if dims == 2:
        image, label = image[..., 12], label[..., 12]
    image = (image - image.mean()) / image.std()
    return {
        IMAGE: torch.from_numpy(image)[None],
        LABEL: torch.from_numpy(label)[None].float(),
        WEIGHT: torch.ones(1, *label.shape),
    }


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("step", STEPS)
def test_each_step_changes_the_patch_and_keeps_label_values(step, dims):
    patch = _patch(dims)
    chain = training_augmentation(list(patch[IMAGE].shape[1:]), _only(step), keys=(IMAGE, LABEL, WEIGHT))
    out = dict(patch)
    for transform in chain:
        transform.set_random_state(seed=0)
        out = transform(out)
    assert out[IMAGE].shape == patch[IMAGE].shape
    assert not torch.allclose(torch.as_tensor(out[IMAGE]), patch[IMAGE]), f"{step} left the image as it was"
    assert set(np.unique(np.asarray(out[LABEL]))) <= {0.0, 1.0, 2.0}
    spatial = step in ("elastic_prob", "affine_prob", "flip_prob")
    assert torch.equal(torch.as_tensor(out[LABEL]), patch[LABEL]) != spatial, (
        "labels move with the image, and only then"
    )
