"""Where training stands (saved in every checkpoint), when it stops, and the validation Dice that decides the best
epoch."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.data import DataLoader
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from pipeline.config import TrainConfig
from pipeline.inference.predictor import sliding_window_logits
from pipeline.networks.description import ModelDescription


@dataclass
class Progress:
    """Where training stands, besides the modules' own states; saved in every checkpoint."""

    epoch: int = 0
    minutes: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    best_dice: float = -math.inf
    best_epoch: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    validations_since_best: int = 0
    stopped: str = ""
    resumed_at: list[int] = field(default_factory=list)  # the epochs after which a killed run was resumed
    step_plan: dict[str, Any] | None = None  # what the probe chose, so that a resumed run keeps it
    skipped_steps: int = 0


def validation_dice(
    network: torch.nn.Module, loader: DataLoader, description: ModelDescription, device: torch.device
) -> torch.Tensor:
    """Mean Dice per foreground class over the loader's cases. The scores stay on ``device``: under torchrun
    MONAI's metric gathers them from every process, and NCCL gathers CUDA tensors only."""
    n_classes = description.network.out_channels
    metric = DiceMetric(include_background=False, reduction="mean_batch")
    network.eval()
    for batch in loader:
        logits = sliding_window_logits(network, batch["image"].to(device), description)
        prediction = one_hot(torch.argmax(logits, dim=1, keepdim=True), n_classes)
        metric(prediction, one_hot(batch["label"].to(device).long(), n_classes))
    network.train()
    return metric.aggregate().cpu()


def stop_reason(progress: Progress, config: TrainConfig) -> str:
    if config.max_minutes is not None and progress.minutes >= config.max_minutes:
        return f"time budget of {config.max_minutes} minutes reached"
    if config.early_stopping_patience is not None and progress.validations_since_best >= config.early_stopping_patience:
        return f"no better validation Dice in {config.early_stopping_patience} validations"
    return ""


def record_validation(progress: Progress, dice: float, network: torch.nn.Module) -> None:
    if dice > progress.best_dice:
        progress.best_dice, progress.best_epoch, progress.validations_since_best = dice, progress.epoch, 0
        progress.best_weights = copy.deepcopy(network.state_dict())
    else:
        progress.validations_since_best += 1
