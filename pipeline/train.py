"""Stage 4: train the U-Net, log the run to MLflow, and write the self-describing model."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from monai.data import CacheDataset, DataLoader, partition_dataset
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.utils import set_determinism
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline import distributed, transforms
from pipeline.batches import EpochPlan, PatchSampler, cache_case, epoch_batches
from pipeline.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from pipeline.config import Params, TrainConfig, flatten, params_yaml
from pipeline.distributed import World
from pipeline.errors import ConfigError, TrainingError
from pipeline.files import write_csv, write_json
from pipeline.inference import sliding_window_logits, validation_label_maps
from pipeline.losses import build_loss, ce_weight_at, set_ce_weight
from pipeline.model import build_network, describe, save_model
from pipeline.network_plan import resolve
from pipeline.optim import build_optimizer, build_schedule
from pipeline.postprocess import decide_largest_component
from pipeline.probe import StepPlan, plan_step
from pipeline.step import NonFiniteStep, train_one_epoch
from pipeline.tracking.environment import environment
from pipeline.tracking.offline import PENDING_DIR, RunLog, logged_run
from pipeline.tracking.provenance import git_commit, lineage_files, provenance_tags
from pipeline.unet_paper import check_tile, input_for_output

log = logging.getLogger(__name__)
MODEL_FILE, HISTORY_FILE, RUN_FILE, CHECKPOINT_FILE = "model.pt", "history.csv", "mlflow_run.json", "checkpoint.pt"
# measured, so they differ between runs of the same params
TIMING_COLUMNS = ["data_wait_fraction", "samples_per_s", "minutes"]
PROBE_EPOCHS = 1_000_000  # the probe draws the batches of epochs from here on


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


def _case_files(
    prep_dir: Path, manifest: pd.DataFrame, case_ids: list[str], weights: bool = False
) -> list[dict[str, str]]:
    columns = ("image", "label", "weight") if weights else ("image", "label")
    return [{**{key: str(prep_dir / manifest.at[c, key]) for key in columns}, "case_id": c} for c in case_ids]


def _fingerprint(params: Params, world_size: int, *files: Path) -> str:
    digest = hashlib.sha256(json.dumps([params.model_dump(exclude={"mlflow"}), world_size], sort_keys=True).encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _patch_size(config: TrainConfig, planned: list[int], depth: int) -> list[int]:
    """The training patch; for unet_paper the input tile whose output covers the planned patch."""
    if config.network != "unet_paper":
        return planned
    if config.patch_size:
        check_tile(config.patch_size, depth)
        return config.patch_size
    return [input_for_output(size, depth) for size in planned]


def validation_dice(
    network: torch.nn.Module, loader: DataLoader, description: dict[str, Any], device: torch.device
) -> torch.Tensor:
    """Mean Dice per foreground class over the loader's cases. The scores stay on ``device``: under torchrun
    MONAI's metric gathers them from every process, and NCCL gathers CUDA tensors only."""
    n_classes = description["network"]["out_channels"]
    metric = DiceMetric(include_background=False, reduction="mean_batch")
    network.eval()
    for batch in loader:
        logits = sliding_window_logits(network, batch["image"].to(device), description)
        prediction = one_hot(torch.argmax(logits, dim=1, keepdim=True), n_classes)
        metric(prediction, one_hot(batch["label"].to(device).long(), n_classes))
    network.train()
    return metric.aggregate().cpu()


def _stop_reason(progress: Progress, config: TrainConfig) -> str:
    if config.max_minutes is not None and progress.minutes >= config.max_minutes:
        return f"time budget of {config.max_minutes} minutes reached"
    if config.early_stopping_patience is not None and progress.validations_since_best >= config.early_stopping_patience:
        return f"no better validation Dice in {config.early_stopping_patience} validations"
    return ""


def _record_validation(progress: Progress, dice: float, network: torch.nn.Module) -> None:
    if dice > progress.best_dice:
        progress.best_dice, progress.best_epoch, progress.validations_since_best = dice, progress.epoch, 0
        progress.best_weights = copy.deepcopy(network.state_dict())
    else:
        progress.validations_since_best += 1


@dataclass
class TrainingData:
    meta: dict[str, Any]
    manifest: pd.DataFrame
    configuration: dict[str, Any]  # the plan's network, patch and batch, with what params set instead
    patch_size: list[int]
    slices: bool
    case_ids: list[str]
    sampler: PatchSampler
    plan: EpochPlan
    val_loader: DataLoader


def _configuration(prep_dir: Path, meta: dict[str, Any], config: TrainConfig) -> tuple[dict[str, Any], bool]:
    """The configuration of ``plan.json`` that ``train.mode`` picks, with params' choices; and whether a 2D
    network is trained on slices of 3D volumes."""
    plan = json.loads((prep_dir / "plan.json").read_text())
    if "configurations" not in plan:
        raise ConfigError(
            f"{prep_dir / 'plan.json'}: has no network plan (an older medseg wrote it); "
            "run the preprocess stage again (dvc repro -f -s preprocess)"
        )
    if meta["dimensions"] == 2 and config.mode == "3d":
        raise ConfigError("train.mode: 3d, but the data are 2D")
    name = plan["configuration"] if config.mode == "auto" else config.mode
    if meta["dimensions"] == 2:
        name = "2d"
    configuration = resolve(plan["configurations"][name], config, plan["spacing"])
    return {**configuration, "name": name}, name == "2d" and meta["dimensions"] == 3


def _training_data(prep_dir: Path, split_json: Path, params: Params, world: World) -> TrainingData:
    """The cached cases, the patch sampler and the validation loader; under torchrun, this process's share."""
    config = params.train
    meta = json.loads((prep_dir / "dataset.json").read_text())
    manifest = pd.read_csv(prep_dir / "manifest.csv", dtype={"case_id": str}).set_index("case_id")
    split = json.loads(split_json.read_text())
    weighted = config.loss == "weight_map_ce"
    if weighted and not ("weight" in manifest.columns and manifest["weight"].notna().all()):
        raise ConfigError(
            f"{prep_dir}: has no weight maps; set preprocess.weight_map and run the preprocess stage again"
        )
    configuration, slices = _configuration(prep_dir, meta, config)
    patch_size = _patch_size(config, configuration["patch_size"], len(configuration["channels"]) - 1)
    if len(patch_size) != (2 if slices else meta["dimensions"]):
        data_kind = "2D slices" if slices else f"{meta['dimensions']}D data"
        raise ConfigError(f"train.patch_size: {patch_size} does not fit {data_kind}")
    keys = ("image", "label", "weight") if weighted else ("image", "label")
    case_ids = split["train"][: config.max_train_cases]
    loaded = CacheDataset(_case_files(prep_dir, manifest, case_ids, weighted), transforms.load(keys), progress=False)
    cases = [cache_case({key: loaded[i][key].as_tensor() for key in keys}) for i in range(len(loaded))]
    sampler = PatchSampler(
        cases,
        patch_size,
        config.augmentation,
        config.foreground_oversampling,
        slices,
        in_plane=configuration["in_plane_augmentation"],
    )
    plan = EpochPlan(len(cases), configuration["batch_size"], params.seed, world.rank, world.size)
    # each process validates its share of the cases; MONAI's metric gathers the scores from all
    val_files = _case_files(prep_dir, manifest, split["validation"])
    val_share = partition_dataset(val_files, num_partitions=world.size, even_divisible=False)[world.rank]
    val_loader = DataLoader(CacheDataset(val_share, transforms.validation(), progress=False), batch_size=1)
    return TrainingData(meta, manifest, configuration, patch_size, slices, case_ids, sampler, plan, val_loader)


def train(prep_dir: Path, split_json: Path, out_dir: Path, params: Params) -> dict[str, Any]:
    """Train in this process, or in each of the processes that ``torchrun`` started."""
    world = distributed.join()
    try:
        return _train(Path(prep_dir), Path(split_json), Path(out_dir), params, world)
    finally:
        distributed.leave(world)


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


def _build(params: Params, data: TrainingData, description: dict, state: dict | None, world: World, started: float):
    config, device = params.train, world.device
    network = build_network(description["network"]).to(device)
    loss_function = build_loss(
        config.loss,
        config.loss_options,
        deep_supervision=description["network"]["name"] == "dynunet" and config.deep_supervision,
    ).to(device)
    threads = _threads(config, device)
    if state and state["progress"].get("step_plan"):
        step_plan = StepPlan(**state["progress"]["step_plan"])
    else:
        step_plan = plan_step(
            config,
            network,
            _probe_batches(data, threads, device),
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
    return Trainer(config, step_plan, network, step_network, loss_function, optimizer, scheduler, scaler)


def _threads(config: TrainConfig, device: torch.device) -> int:
    return config.data_workers if config.data_workers is not None else (4 if device.type == "cuda" else 1)


def _probe_batches(data: TrainingData, threads: int, device: torch.device):
    """Batches of epochs training never draws (it counts from 1), endlessly."""
    for epoch in itertools.count(PROBE_EPOCHS):
        yield from epoch_batches(data.sampler, data.plan, epoch, threads, pin_memory=device.type == "cuda")


def _nonfinite(problem: NonFiniteStep, epoch: int, trainer: Trainer, checkpoint: Path) -> TrainingError:
    kept = (
        f"the last good state, after epoch {epoch - 1}, is kept in {checkpoint}"
        if checkpoint.is_file()
        else "no checkpoint was written yet"
    )
    return TrainingError(
        f"training stopped at epoch {epoch}, {problem}; {kept}, and no model was written. Try a lower "
        f"train.learning_rate (now {trainer.config.learning_rate:g}), train.amp=false (this run used "
        f"{trainer.step_plan.precision}), train.compile=false, or train.nonfinite=skip to skip such steps"
    )


def _train(prep_dir: Path, split_json: Path, out_dir: Path, params: Params, world: World) -> dict[str, Any]:
    started, device = time.monotonic(), world.device
    set_determinism(seed=params.seed + world.rank)  # same initial weights (DDP copies rank 0's); batches seed their own

    data = _training_data(prep_dir, split_json, params, world)
    labels = data.meta["labels"]
    description = describe(
        params,
        labels,
        data.meta["modality"],
        data.meta["preprocess"],
        data.patch_size,
        data.meta["label_values"],
        2 if data.slices else None,
        configuration=data.configuration,
    )
    checkpoint_path = out_dir / CHECKPOINT_FILE
    fingerprint = _fingerprint(params, world.size, prep_dir / "manifest.csv", split_json)
    # every process reads it: multi-node runs need out_dir on shared storage
    state = load_checkpoint(checkpoint_path, fingerprint)
    trainer = _build(params, data, description, state, world, started)
    config, threads = trainer.config, _threads(trainer.config, device)
    progress, run_id = Progress(step_plan=trainer.step_plan.as_dict()), None
    if state:
        progress, run_id = Progress(**state["progress"]), state["mlflow_run_id"]
        if world.main:
            log.warning("resuming from %s after epoch %d", checkpoint_path, progress.epoch)
    elif world.main:
        log.info("planned: %s", json.dumps({**trainer.step_plan.as_dict(), "configuration": data.configuration}))
    description["step_plan"] = trainer.step_plan.as_dict()

    foreground = [name for key, name in sorted(labels.items(), key=lambda kv: int(kv[0])) if key != "0"]
    tracked = logged_run(out_dir / PENDING_DIR, params.mlflow.experiment, run_id)
    with tracked if world.main else contextlib.nullcontext() as run:
        if world.main and state is None:
            effective = params.model_copy(update={"train": config})
            run.log_params({**flatten(effective), "processes": world.size, **environment(device, world.size, threads)})
            run.log_params(_planned_params(data.configuration, trainer.step_plan))
            run.set_tags({**provenance_tags(split_json), "dataset": data.meta["name"], "device": device.type})
            run.log_dataset(data.manifest.reset_index(), source=prep_dir, name=data.meta["name"])
            for record in ("fingerprint.json", "plan.json", "validation.csv"):
                run.log_artifact(prep_dir / record, artifact_path="data")
            _log_lineage(run, effective, split_json)
        elif world.main:  # a killed run continues: the gap is marked where it happened
            progress.resumed_at.append(progress.epoch)
            run.set_tags({"resumed_at_epoch": ",".join(map(str, progress.resumed_at))})
            run.log_metrics({"resumed_at_epoch": progress.epoch}, step=progress.epoch)
        if world.main:
            run.start_system_metrics()
            write_json(out_dir / RUN_FILE, {"run_id": run.run_id, "experiment": params.mlflow.experiment})
        while progress.epoch < config.epochs and not progress.stopped:
            record = _epoch(trainer, data, description, progress, world, threads, foreground, checkpoint_path)
            progress.stopped = _stop_reason(progress, config)
            rng = world.gather(rng_state())
            if not world.main:
                continue
            run.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=progress.epoch)
            log.info(
                "epoch %d: %s", progress.epoch, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
            )
            write_csv(out_dir / HISTORY_FILE, pd.DataFrame(progress.history))
            save_checkpoint(
                checkpoint_path,
                {
                    "fingerprint": fingerprint,
                    "network": trainer.network.state_dict(),
                    "optimizer": trainer.optimizer.state_dict(),
                    "scheduler": trainer.scheduler.state_dict(),
                    "scaler": trainer.scaler.state_dict(),
                    "rng": rng,
                    "progress": asdict(progress),
                    "mlflow_run_id": run.run_id,
                },
            )
        if world.main:
            _finish(out_dir, trainer.network, description, progress, params, run, data.val_loader)
    return progress.history[-1]


def _planned_params(configuration: dict[str, Any], step_plan: StepPlan) -> dict[str, Any]:
    """What the plan and the probe chose, as MLflow params (``planned.*``), with their reasons."""
    chosen = {k: v for k, v in configuration.items() if k != "reasons"}
    values = {f"planned.{k}": v for k, v in {**chosen, **step_plan.as_dict()}.items() if k != "reasons"}
    reasons = {**configuration.get("reasons", {}), **step_plan.reasons}
    return {**values, **{f"planned.why.{k}": v for k, v in reasons.items()}}


def _epoch(
    trainer: Trainer,
    data: TrainingData,
    description: dict,
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
        dice = validation_dice(trainer.network, data.val_loader, description, device)
        record.update({f"val_dice_{name}": float(d) for name, d in zip(foreground, dice)})
        record["val_dice_mean"] = float(dice.nanmean())
        _record_validation(progress, record["val_dice_mean"], trainer.network)
    progress.minutes += world.broadcast(time.monotonic() - started) / 60  # training and validation
    record["minutes"] = progress.minutes
    progress.history.append(record)
    return record


def _log_lineage(run: RunLog, params: Params, split_json: Path) -> None:
    """The resolved params, the split and ``dvc.lock`` as the run's ``inputs/`` files."""
    with tempfile.TemporaryDirectory() as scratch:
        resolved = Path(scratch) / "params.yaml"
        resolved.write_text(params_yaml(params))
        for path in (resolved, *lineage_files(split_json)):
            run.log_artifact(path, artifact_path="inputs")


def _finish(
    out_dir: Path,
    network: torch.nn.Module,
    description: dict[str, Any],
    progress: Progress,
    params: Params,
    run: RunLog,
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
        classes = decide_largest_component(cases, len(description["labels"]))
        description["postprocess"] = {"largest_component_classes": classes}
    description["provenance"] = {
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
