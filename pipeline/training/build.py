"""The trainer's parts, built once: network, loss, optimiser, schedule and scaler, restored from a checkpoint or
planned by the probe (precision, compilation, epochs)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from pipeline.config import Params, TrainConfig
from pipeline.networks.description import ModelDescription
from pipeline.networks.model import build_network
from pipeline.training.batches import epoch_batches
from pipeline.training.checkpoint import restore_rng_state
from pipeline.training.data import TrainingData
from pipeline.training.distributed import World
from pipeline.training.losses import build_loss
from pipeline.training.optim import build_optimizer, build_schedule
from pipeline.training.probe import StepPlan, plan_step
from pipeline.training.progress import validation_dice

PROBE_EPOCHS = 1_000_000  # the probe draws the batches of epochs from here on


@dataclass
class Trainer:
    """What the epoch loop works with, built once the probe has planned the step."""

    config: TrainConfig  # params' train section with the planned epochs and validation interval filled in
    step_plan: StepPlan
    network: torch.nn.Module
    step_network: torch.nn.Module
    loss_function: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    deadline: float | None = None  # time.monotonic() at which the budget ends, when it set the epochs


def build_trainer(
    params: Params, data: TrainingData, description: ModelDescription, state: dict | None, world: World, started: float
):
    config, device = params.train, world.device
    network = build_network(description.network).to(device)
    loss_function = build_loss(
        config.loss,
        config.loss_options,
        deep_supervision=description.network.name == "dynunet" and config.deep_supervision,
    ).to(device)
    threads = data_threads(config, device)
    if state and state["progress"].get("step_plan"):
        step_plan = StepPlan(**{"data_threads": threads, **state["progress"]["step_plan"]})
    else:
        step_plan = plan_step(
            config,
            network,
            lambda n: _probe_batches(data, n, device),
            threads,
            loss_function,
            lambda parameters: build_optimizer(parameters, config),
            lambda: validation_dice(network, data.val_loader, description, device),
            len(data.plan.batches(1)),
            lambda: config.budget_minutes * 60 - (time.monotonic() - started),
            world.broadcast,
        )
    config = config.model_copy(update={"epochs": step_plan.epochs, "val_every": step_plan.val_every})
    optimizer = build_optimizer(network.parameters(), config)
    scheduler = build_schedule(optimizer, config)
    scaler = torch.amp.GradScaler(device.type, enabled=step_plan.precision == "float16")
    if state:
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"][world.rank])
    step_network = (
        DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
        if world.size > 1
        else network
    )
    if step_plan.compiled:
        step_network = torch.compile(step_network)
    # a resumed run keeps its epochs: its clock started again
    deadline = started + config.budget_minutes * 60 if params.train.epochs is None and not state else None
    return Trainer(config, step_plan, network, step_network, loss_function, optimizer, scheduler, scaler, deadline)


def data_threads(config: TrainConfig, device: torch.device) -> int:
    """Params' number, or the default that the probe compares with preparing batches in the step's thread."""
    return config.data_workers if config.data_workers is not None else (4 if device.type == "cuda" else 1)


def _probe_batches(data: TrainingData, threads: int, device: torch.device):
    """Batches of epochs training never draws (it counts from 1), endlessly."""
    for epoch in itertools.count(PROBE_EPOCHS):
        yield from epoch_batches(data.sampler, data.plan, epoch, threads, pin_memory=device.type == "cuda")
