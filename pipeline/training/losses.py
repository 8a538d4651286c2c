"""The losses of the U-Net literature, all MONAI's, chosen by name in ``train.loss``."""

from __future__ import annotations

import torch
from monai import losses

from pipeline.config import LossConfig


class WeightedCrossEntropy(torch.nn.Module):
    """Cross-entropy with class weights, on MONAI's (logits, label-map) convention."""

    def __init__(self, weights: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weights", weights)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, labels[:, 0].long(), weight=self.weights)


class WeightMapCrossEntropy(torch.nn.Module):
    """Cross-entropy weighted per voxel by a precomputed map (the U-Net paper's boundary weights)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        voxel_loss = torch.nn.functional.cross_entropy(logits, labels[:, 0].long(), reduction="none")
        return (voxel_loss * weights[:, 0]).mean()


class DeepSupervised(torch.nn.Module):
    """Weighs the loss over a DynUNet's stacked deep-supervision heads (training mode), MONAI's way."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.supervised = losses.DeepSupervisionLoss(loss)

    def forward(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        heads = list(torch.unbind(output, dim=1)) if output.dim() == labels.dim() + 1 else output
        return self.supervised(heads, labels)


def build_loss(name: str, config: LossConfig, deep_supervision: bool = False) -> torch.nn.Module:
    """Every loss takes logits (B, C, ...) and a label map (B, 1, ...)."""
    loss = _loss(name, config)
    return DeepSupervised(loss) if deep_supervision else loss


def _loss(name: str, config: LossConfig) -> torch.nn.Module:
    common = {"to_onehot_y": True, "softmax": True, "batch": config.batch_dice}
    weights = torch.tensor(config.class_weights, dtype=torch.float32) if config.class_weights else None
    if name == "dice_ce":
        return losses.DiceCELoss(**common, lambda_dice=config.dice_weight, lambda_ce=config.ce_weight, weight=weights)
    if name == "dice_focal":
        return losses.DiceFocalLoss(
            **common, gamma=config.focal_gamma, lambda_dice=config.dice_weight, lambda_focal=config.ce_weight
        )
    if name == "focal":
        return losses.FocalLoss(to_onehot_y=True, use_softmax=True, gamma=config.focal_gamma, weight=weights)
    if name == "tversky":
        return losses.TverskyLoss(**common, alpha=config.tversky_alpha, beta=config.tversky_beta)
    if name == "generalized_dice":
        return losses.GeneralizedDiceLoss(**common)
    if name == "jaccard":
        return losses.DiceLoss(**common, jaccard=True)
    if name == "weighted_ce":
        return WeightedCrossEntropy(weights)
    if name == "weight_map_ce":
        return WeightMapCrossEntropy()
    raise ValueError(f"unknown loss '{name}'")


def ce_weight_at(config: LossConfig, epoch: int, epochs: int) -> float | None:
    """The CE weight of epoch ``epoch`` (1-based) when it follows a schedule: linear from
    ``ce_weight`` at the first epoch to ``ce_weight_end`` at the last; None when it is fixed."""
    if config.ce_weight_end is None:
        return None
    progress = (epoch - 1) / max(1, epochs - 1)
    return config.ce_weight + (config.ce_weight_end - config.ce_weight) * progress


def set_ce_weight(loss: torch.nn.Module, weight: float | None) -> None:
    """Set the CE (or focal) term's weight of a combined loss, MONAI's attribute, inside any wrapper."""
    if weight is None:
        return
    inner = loss.supervised.loss if isinstance(loss, DeepSupervised) else loss
    if isinstance(inner, losses.DiceCELoss):
        inner.lambda_ce = weight
    elif isinstance(inner, losses.DiceFocalLoss):
        inner.lambda_focal = weight
    else:
        raise ValueError(
            f"{type(inner).__name__} has no CE weight to schedule; ce_weight_end is for dice_ce and dice_focal"
        )
