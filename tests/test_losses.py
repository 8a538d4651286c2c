import pytest
import torch

from pipeline.config import LossConfig, TrainConfig
from pipeline.losses import build_loss

NAMES = TrainConfig.model_fields["loss"].annotation.__args__


def _batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=generator)
    return labels


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_is_lower_for_a_right_answer_and_has_gradients(name):
    labels = _batch()
    options = LossConfig(class_weights=[0.2, 1.0, 1.0])
    loss = build_loss(name, options)
    right = 8.0 * torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3).float() - 4
    wrong = right.roll(1, dims=1).clone().requires_grad_()
    assert loss(right, labels) < loss(wrong, labels)
    loss(wrong, labels).backward()
    assert wrong.grad is not None and wrong.grad.abs().sum() > 0


def test_tversky_weighs_false_negatives_by_beta():
    labels = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    labels[..., :2] = 1
    missed = torch.full((1, 2, 4, 4, 4), -10.0)
    missed[:, 0] = 10  # background everywhere but on half of class 1: false negatives for the small class
    missed[:, 0, ..., :1], missed[:, 1, ..., :1] = -10, 10
    lenient = build_loss("tversky", LossConfig(tversky_alpha=0.9, tversky_beta=0.1))(missed, labels)
    strict = build_loss("tversky", LossConfig(tversky_alpha=0.1, tversky_beta=0.9))(missed, labels)
    assert strict > lenient


def test_deep_supervision_weighs_every_head():
    labels = _batch()
    heads = torch.randn(2, 3, 3, 8, 8, 8)  # (batch, heads, classes, ...) as DynUNet returns while training
    supervised = build_loss("dice_ce", LossConfig(), deep_supervision=True)
    plain = build_loss("dice_ce", LossConfig())
    assert supervised(heads, labels) != plain(heads[:, 0], labels)
    assert torch.isclose(supervised(heads[:, 0], labels), plain(heads[:, 0], labels))
