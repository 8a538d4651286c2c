import pytest
import torch

from pipeline.config import LossConfig, TrainConfig
from pipeline.training.losses import build_loss, ce_weight_at, set_ce_weight

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
    targets = [labels, torch.rand(labels.shape) + 0.5] if name == "weight_map_ce" else [labels]
    right = 8.0 * torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3).float() - 4
    wrong = right.roll(1, dims=1).clone().requires_grad_()
    assert loss(right, *targets) < loss(wrong, *targets)
    loss(wrong, *targets).backward()
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


def test_the_weight_map_scales_each_voxels_cross_entropy():
    labels, logits = _batch(), torch.randn(2, 3, 8, 8, 8)
    plain = torch.nn.functional.cross_entropy(logits, labels[:, 0])
    weighted = build_loss("weight_map_ce", LossConfig())
    assert torch.isclose(weighted(logits, labels, torch.ones(labels.shape)), plain)
    heavy = torch.ones(labels.shape)
    heavy[..., :4] = 3.0  # half the voxels count three times
    voxel = torch.nn.functional.cross_entropy(logits, labels[:, 0], reduction="none")
    assert torch.isclose(
        weighted(logits, labels, heavy), (voxel[..., :4].sum() * 3 + voxel[..., 4:].sum()) / voxel.numel()
    )


def test_the_ce_weight_follows_its_schedule_inside_deep_supervision():
    options = LossConfig(ce_weight=1.0, ce_weight_end=0.0)
    assert [ce_weight_at(options, epoch, 5) for epoch in range(1, 6)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert ce_weight_at(LossConfig(), 3, 5) is None
    supervised = build_loss("dice_ce", options, deep_supervision=True)
    set_ce_weight(supervised, 0.25)
    assert supervised.supervised.loss.lambda_ce == 0.25
    focal = build_loss("dice_focal", options)
    set_ce_weight(focal, 0.5)
    assert focal.lambda_focal == 0.5
    with pytest.raises(ValueError, match="ce_weight_end is for dice_ce and dice_focal"):
        set_ce_weight(build_loss("tversky", options), 0.5)


@pytest.mark.parametrize("name", ["dice_ce", "tversky", "jaccard"])
def test_batch_dice_scores_the_batch_as_one_volume(name):
    """A patch without class 2 scores it alone per patch; over the batch it counts only the voxels it has."""
    labels = _batch()
    labels[0][labels[0] == 2] = 0
    logits = torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    options = LossConfig(batch_dice=True, ce_weight=0.0)
    batched = build_loss(name, options)(logits, labels)
    as_one = build_loss(name, options)(torch.cat(list(logits), dim=1)[None], torch.cat(list(labels), dim=1)[None])
    assert batched == pytest.approx(as_one.item(), rel=1e-5)
    per_patch = LossConfig(batch_dice=False, ce_weight=0.0)
    assert build_loss(name, per_patch)(logits, labels) != pytest.approx(batched.item(), rel=1e-3)
