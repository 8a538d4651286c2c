"""Optimisers and learning-rate schedules, by name in ``train.optimizer`` and ``train.schedule``."""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler

from pipeline.config import TrainConfig


def build_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.learning_rate, weight_decay=config.weight_decay, momentum=config.momentum, nesterov=True
    )


def build_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> lr_scheduler.LRScheduler:
    """Stepped once per epoch; a linear warm-up, if any, comes first."""
    decay_epochs = max(1, config.epochs - config.warmup_epochs)
    if config.schedule == "cosine":
        decay = lr_scheduler.CosineAnnealingLR(optimizer, T_max=decay_epochs)
    elif config.schedule == "poly":
        decay = lr_scheduler.PolynomialLR(optimizer, total_iters=decay_epochs, power=config.poly_power)
    elif config.schedule == "step":
        decay = lr_scheduler.StepLR(optimizer, step_size=config.step_epochs, gamma=config.step_gamma)
    else:
        decay = lr_scheduler.ConstantLR(optimizer, factor=1.0)
    if not config.warmup_epochs:
        return decay
    warmup = lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / (config.warmup_epochs + 1), total_iters=config.warmup_epochs
    )
    return lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[config.warmup_epochs])


def rebuild_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, epochs_done: int
) -> lr_scheduler.LRScheduler:
    """The schedule over ``config.epochs`` as it stands after ``epochs_done`` epochs had it been built with that
    count from the start: when a run's epochs are fitted again, its schedule stretches or shrinks, never cut off."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    schedule = build_schedule(optimizer, config)
    for _ in range(epochs_done):
        schedule.step()
    return schedule
