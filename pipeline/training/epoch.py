"""One epoch: the batches through the training step, the schedule, validation when due, and the epoch's record."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.errors import TrainingError
from pipeline.networks.description import ModelDescription
from pipeline.training.batches import epoch_batches
from pipeline.training.build import Trainer
from pipeline.training.checkpoint import saved_epoch
from pipeline.training.data import TrainingData
from pipeline.training.distributed import World
from pipeline.training.losses import ce_weight_at, set_ce_weight
from pipeline.training.progress import Progress, record_validation, validation_dice
from pipeline.training.step import NonFiniteStep, train_one_epoch


def _nonfinite(problem: NonFiniteStep, epoch: int, trainer: Trainer, checkpoint: Path) -> TrainingError:
    saved = saved_epoch(checkpoint)
    kept = (
        f"the last good state, after epoch {saved}, is kept in {checkpoint}"
        if saved
        else "no checkpoint was written yet"
    )
    return TrainingError(
        f"training stopped at epoch {epoch}, {problem}; {kept}, and no model was written. Try a lower "
        f"train.learning_rate (now {trainer.config.learning_rate:g}), train.amp=false (this run used "
        f"{trainer.step_plan.precision}), train.compile=false, or train.nonfinite=skip to skip such steps"
    )


def run_epoch(
    trainer: Trainer,
    data: TrainingData,
    description: ModelDescription,
    progress: Progress,
    world: World,
    threads: int,
    foreground: list[str],
    checkpoint_path: Path,
) -> dict[str, float]:
    """Train one epoch, validate when due; the epoch's record, also appended to the history."""
    config, device = trainer.config, world.device
    started = time.monotonic()
    progress.epoch += 1
    ce_weight = ce_weight_at(config.loss_options, progress.epoch, config.epochs)
    set_ce_weight(trainer.loss_function, ce_weight)
    batch_cases = data.plan.batches(progress.epoch)
    batches = epoch_batches(data.sampler, data.plan, progress.epoch, threads, pin_memory=device.type == "cuda")
    bar = tqdm(
        batches,
        total=len(batch_cases),
        desc=f"epoch {progress.epoch}/{config.epochs}",
        unit="batch",
        leave=False,
        disable=not world.main,
    )
    try:
        measured = train_one_epoch(
            trainer.step_network,
            bar,
            trainer.loss_function,
            trainer.optimizer,
            trainer.scaler,
            trainer.step_plan.dtype,
            skip_nonfinite=config.nonfinite == "skip",
            name_batch=lambda index: "cases " + ", ".join(data.case_ids[i] for i in batch_cases[index]),
        )
    except NonFiniteStep as problem:
        raise _nonfinite(problem, progress.epoch, trainer, checkpoint_path) from None
    trainer.scheduler.step()
    seconds = world.broadcast(time.monotonic() - started)
    record: dict[str, float] = {
        "epoch": progress.epoch,
        "train_loss": world.mean(measured["train_loss"]),
        "lr": trainer.scheduler.get_last_lr()[0],
        "data_wait_fraction": world.mean(measured["data_wait_fraction"]),
        "samples_per_s": len(batch_cases) * data.plan.batch_size * world.size / seconds,
    }
    if config.nonfinite == "skip":
        progress.skipped_steps += measured["skipped_steps"]
        record["skipped_steps"] = measured["skipped_steps"]
    if ce_weight is not None:
        record["ce_weight"] = ce_weight
    if device.type == "cuda":
        record["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    out_of_time = config.max_minutes is not None and progress.minutes + seconds / 60 >= config.max_minutes
    if progress.epoch % config.val_every == 0 or progress.epoch == config.epochs or out_of_time:
        validation_started = time.monotonic()
        dice = validation_dice(trainer.network, data.val_loader, description, device)
        record["validation_seconds"] = world.broadcast(time.monotonic() - validation_started)
        record.update({f"val_dice_{name}": float(d) for name, d in zip(foreground, dice)})
        record["val_dice_mean"] = float(dice.nanmean())
        record_validation(progress, record["val_dice_mean"], trainer.network)
    progress.minutes += world.broadcast(time.monotonic() - started) / 60  # training and validation
    record["minutes"] = progress.minutes
    progress.history.append(record)
    return record
