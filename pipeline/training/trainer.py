"""Stage 4's work: train the planned U-Net, record the run through the run log it is handed, write the
self-describing model. Resumes exactly from its last checkpoint after a crash or kill."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from monai.data import DataLoader
from monai.utils import set_determinism

from pipeline.config import Params
from pipeline.files import write_csv, write_json
from pipeline.inference.postprocess import decide_largest_component
from pipeline.inference.predictor import validation_label_maps
from pipeline.networks.description import ModelDescription, Postprocess
from pipeline.networks.model import describe, save_model
from pipeline.params import flatten, params_yaml
from pipeline.provenance import git_commit, lineage_files, provenance_tags
from pipeline.run_log import OpenRun, RunLogger
from pipeline.training import distributed
from pipeline.training.budget import Pace, refit
from pipeline.training.build import Trainer, build_trainer
from pipeline.training.checkpoint import load_checkpoint, rng_state, save_checkpoint
from pipeline.training.data import TrainingData, training_data
from pipeline.training.distributed import World
from pipeline.training.environment import environment
from pipeline.training.epoch import run_epoch
from pipeline.training.probe import StepPlan
from pipeline.training.progress import Progress, stop_reason

log = logging.getLogger(__name__)
MODEL_FILE, HISTORY_FILE, RUN_FILE, CHECKPOINT_FILE = "model.pt", "history.csv", "mlflow_run.json", "checkpoint.pt"
# measured, so they differ between runs of the same params
TIMING_COLUMNS = ["data_wait_fraction", "samples_per_s", "minutes", "validation_seconds"]
# At most this much training is redone after a crash. A checkpoint after every epoch cost a 2D hippocampus run of
# half-second epochs a quarter of its time (5 MB of checkpoint and an ever longer history.csv, 0.1 s an epoch).
# Epochs after the checkpoint that a resumed run redoes are logged to MLflow again, under the same steps.
CHECKPOINT_SECONDS = 60.0


def train(prep_dir: Path, split_json: Path, out_dir: Path, params: Params, open_run: OpenRun) -> dict[str, Any]:
    """Train in this process, or in each of the processes that ``torchrun`` started (rank 0 alone logs, through
    ``open_run``)."""
    world = distributed.join()
    try:
        return _train(Path(prep_dir), Path(split_json), Path(out_dir), params, world, open_run)
    finally:
        distributed.leave(world)


def _fingerprint(params: Params, world_size: int, *files: Path) -> str:
    digest = hashlib.sha256(json.dumps([params.model_dump(exclude={"mlflow"}), world_size], sort_keys=True).encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _train(
    prep_dir: Path, split_json: Path, out_dir: Path, params: Params, world: World, open_run: OpenRun
) -> dict[str, Any]:
    started = time.monotonic()
    set_determinism(seed=params.seed + world.rank)  # same initial weights (DDP copies rank 0's); batches seed their own
    data = training_data(prep_dir, split_json, params, world)
    description = _description(params, data)
    checkpoint_path = out_dir / CHECKPOINT_FILE
    fingerprint = _fingerprint(params, world.size, prep_dir / "manifest.csv", split_json)
    # every process reads it: multi-node runs need out_dir on shared storage
    state = load_checkpoint(checkpoint_path, fingerprint)
    trainer = build_trainer(params, data, description, state, world, started)
    progress, run_id = Progress(step_plan=trainer.step_plan.as_dict()), None
    if state:
        progress, run_id = Progress(**state["progress"]), state["mlflow_run_id"]
        if world.main:
            log.warning("resuming from %s after epoch %d", checkpoint_path, progress.epoch)
    elif world.main:
        log.info("planned: %s", json.dumps({**trainer.step_plan.as_dict(), "configuration": data.configuration}))
    description.step_plan = trainer.step_plan.as_dict()
    with open_run(run_id) if world.main else contextlib.nullcontext() as run:
        if world.main:
            _start_run(run, params, trainer, data, progress, world, prep_dir, split_json, resumed=state is not None)
            write_json(out_dir / RUN_FILE, {"run_id": run.run_id, "experiment": params.mlflow.experiment})
        _epochs(trainer, data, description, progress, world, run, out_dir, fingerprint)
        if world.main:
            _finish(out_dir, trainer.network, description, progress, params, run, data.val_loader)
    return progress.history[-1]


def _description(params: Params, data: TrainingData) -> dict[str, Any]:
    meta = data.meta
    return describe(
        params,
        meta["labels"],
        meta["modality"],
        meta["preprocess"],
        data.patch_size,
        meta["label_values"],
        2 if data.slices else None,
        configuration=data.configuration,
    )


def _start_run(
    run: RunLogger,
    params: Params,
    trainer: Trainer,
    data: TrainingData,
    progress: Progress,
    world: World,
    prep_dir: Path,
    split_json: Path,
    resumed: bool,
) -> None:
    """A new run records what made it; a killed run that continues marks the gap where it happened."""
    if resumed:
        progress.resumed_at.append(progress.epoch)
        run.set_tags({"resumed_at_epoch": ",".join(map(str, progress.resumed_at))})
        run.log_metrics({"resumed_at_epoch": progress.epoch}, step=progress.epoch)
    else:
        device, threads = world.device, trainer.step_plan.data_threads
        effective = params.model_copy(update={"train": trainer.config})
        run.log_params({**flatten(effective), "processes": world.size, **environment(device, world.size, threads)})
        run.log_params(_planned_params(data.configuration, trainer.step_plan))
        run.set_tags({**provenance_tags(split_json), "dataset": data.meta["name"], "device": device.type})
        run.log_dataset(data.manifest.reset_index(), source=prep_dir, name=data.meta["name"])
        for record in ("fingerprint.json", "plan.json", "validation.csv"):
            run.log_artifact(prep_dir / record, artifact_path="data")
        _log_lineage(run, effective, split_json)
    run.start_system_metrics()


def _epochs(
    trainer: Trainer,
    data: TrainingData,
    description: ModelDescription,
    progress: Progress,
    world: World,
    run: RunLogger | None,
    out_dir: Path,
    fingerprint: str,
) -> None:
    """Epochs until the planned number or a stop; after each, the record logged, and a checkpoint (rank 0) after
    the first, the last, and the first after ``CHECKPOINT_SECONDS``."""
    threads = trainer.step_plan.data_threads
    labels = data.meta["labels"]
    foreground = [name for key, name in sorted(labels.items(), key=lambda kv: int(kv[0])) if key != "0"]
    checkpoint_path = out_dir / CHECKPOINT_FILE
    pace = Pace(trainer.deadline) if trainer.deadline is not None else None
    saved_at = None
    while progress.epoch < trainer.config.epochs and not progress.stopped:
        epoch_started = time.monotonic()
        record = run_epoch(trainer, data, description, progress, world, threads, foreground, checkpoint_path)
        progress.stopped = stop_reason(progress, trainer.config)
        if pace and pace.due(progress.epoch, trainer.config.epochs):
            if refit(trainer, progress, pace, world.broadcast):
                record["planned_epochs"] = trainer.config.epochs
            progress.step_plan = description.step_plan = trainer.step_plan.as_dict()  # its reasons say how it went
        rng = world.gather(rng_state())
        if world.main:
            _log_epoch(record, progress, run)
            last = progress.epoch >= trainer.config.epochs or progress.stopped
            if saved_at is None or last or time.monotonic() - saved_at >= CHECKPOINT_SECONDS:
                _save(trainer, progress, run, out_dir, {"fingerprint": fingerprint, "rng": rng})
                saved_at = time.monotonic()
        if pace:  # checkpointing included
            pace.measure(progress.epoch, time.monotonic() - epoch_started, record.get("validation_seconds"))


def _log_epoch(record: dict[str, float], progress: Progress, run: RunLogger) -> None:
    measured = {k: v for k, v in record.items() if k != "epoch"}
    run.log_metrics(measured, step=progress.epoch)
    log.info("epoch %d: %s", progress.epoch, ", ".join(f"{k}={v:.4g}" for k, v in measured.items()))


def _save(trainer: Trainer, progress: Progress, run: RunLogger, out_dir: Path, state: dict) -> None:
    """The history so far, and everything needed to resume from here."""
    write_csv(out_dir / HISTORY_FILE, pd.DataFrame(progress.history))
    save_checkpoint(
        out_dir / CHECKPOINT_FILE,
        {
            **state,
            "network": trainer.network.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "progress": asdict(progress),
            "mlflow_run_id": run.run_id,
        },
    )


def _planned_params(configuration: dict[str, Any], step_plan: StepPlan) -> dict[str, Any]:
    """What the plan and the probe chose, as MLflow params (``planned.*``), with their reasons."""
    chosen = {k: v for k, v in configuration.items() if k != "reasons"}
    values = {f"planned.{k}": v for k, v in {**chosen, **step_plan.as_dict()}.items() if k != "reasons"}
    reasons = {**configuration.get("reasons", {}), **step_plan.reasons}
    return {**values, **{f"planned.why.{k}": v for k, v in reasons.items()}}


def _log_lineage(run: RunLogger, params: Params, split_json: Path) -> None:
    """The resolved params, the split and ``dvc.lock`` as the run's ``inputs/`` files."""
    with tempfile.TemporaryDirectory() as scratch:
        resolved = Path(scratch) / "params.yaml"
        resolved.write_text(params_yaml(params))
        for path in (resolved, *lineage_files(split_json)):
            run.log_artifact(path, artifact_path="inputs")


def _finish(
    out_dir: Path,
    network: torch.nn.Module,
    description: ModelDescription,
    progress: Progress,
    params: Params,
    run: RunLogger,
    val_loader: DataLoader,
) -> None:
    """Write the model (the last or the best weights) with its provenance, and close the run."""
    config = params.train
    if progress.stopped:
        log.warning("stopped after epoch %d: %s", progress.epoch, progress.stopped)
    if config.keep == "best" and progress.best_weights is not None:
        network.load_state_dict(progress.best_weights)
    if params.inference.largest_component:  # on this process's validation cases (all of them without torchrun)
        cases = validation_label_maps(network, val_loader, description)
        classes = decide_largest_component(cases, len(description.labels))
        description.postprocess = Postprocess(largest_component_classes=classes)
    description.provenance = {
        "mlflow_run_id": run.run_id,
        "git_commit": git_commit()[0],
        "epochs": progress.epoch,
        "kept": f"best (epoch {progress.best_epoch})" if config.keep == "best" else "last",
        "stopped": progress.stopped,
        "final_val_dice": {k: v for k, v in progress.history[-1].items() if k.startswith("val_dice")},
        "params": params.model_dump(),
    }
    save_model(out_dir / MODEL_FILE, network, description)
    run.log_artifact(out_dir / MODEL_FILE, artifact_path="model")
    run.log_artifact(out_dir / HISTORY_FILE)
    run.log_metrics(
        {"train_minutes": progress.minutes, "best_val_dice_mean": progress.best_dice, "best_epoch": progress.best_epoch}
    )
    (out_dir / CHECKPOINT_FILE).unlink()  # the run is complete; a later run must not resume from it
