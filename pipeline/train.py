"""Stage 4: train the U-Net, log the run to MLflow, and write the self-describing model."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from monai.data import CacheDataset, DataLoader
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.utils import set_determinism
from tqdm import tqdm

from pipeline import tracking, transforms
from pipeline.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from pipeline.config import Params, TrainConfig, flatten
from pipeline.errors import ConfigError
from pipeline.files import write_csv, write_json
from pipeline.inference import sliding_window_logits
from pipeline.losses import build_loss
from pipeline.model import build_network, describe, save_model
from pipeline.optim import build_optimizer, build_schedule
from pipeline.plan import median_shape, plan_patch_size

log = logging.getLogger(__name__)
MODEL_FILE, HISTORY_FILE, RUN_FILE, CHECKPOINT_FILE = "model.pt", "history.csv", "mlflow_run.json", "checkpoint.pt"


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


def _case_files(prep_dir: Path, manifest: pd.DataFrame, case_ids: list[str]) -> list[dict[str, str]]:
    return [
        {"image": str(prep_dir / manifest.at[c, "image"]), "label": str(prep_dir / manifest.at[c, "label"]), "case_id": c}
        for c in case_ids
    ]


def _fingerprint(params: Params, *files: Path) -> str:
    digest = hashlib.sha256(json.dumps(params.model_dump(exclude={"mlflow"}), sort_keys=True).encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def validation_dice(network: torch.nn.Module, loader: DataLoader, description: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Mean Dice per foreground class over the loader's cases."""
    n_classes = description["network"]["out_channels"]
    metric = DiceMetric(include_background=False, reduction="mean_batch")
    network.eval()
    for batch in loader:
        logits = sliding_window_logits(network, batch["image"].to(device), description)
        prediction = one_hot(torch.argmax(logits, dim=1, keepdim=True), n_classes)
        metric(prediction.cpu(), one_hot(batch["label"].long(), n_classes))
    network.train()
    return metric.aggregate().cpu()


def train_one_epoch(network, batches: tqdm, loss_function, optimizer, scaler: torch.amp.GradScaler, device: torch.device) -> float:
    """One pass over the training data, in mixed precision where the scaler is enabled; returns the mean loss."""
    network.train()
    losses = []
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=scaler.is_enabled()):
            loss = loss_function(network(batch["image"].to(device)), batch["label"].to(device))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
        batches.set_postfix(loss=f"{loss.item():.4f}")
    return sum(losses) / len(losses)


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


def train(prep_dir: Path, split_json: Path, out_dir: Path, params: Params) -> dict[str, Any]:
    prep_dir, out_dir = Path(prep_dir), Path(out_dir)
    config = params.train
    set_determinism(seed=params.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    dataset_meta = json.loads((prep_dir / "dataset.json").read_text())
    labels = dataset_meta["labels"]
    manifest = pd.read_csv(prep_dir / "manifest.csv", dtype={"case_id": str}).set_index("case_id")
    split = json.loads(Path(split_json).read_text())
    train_ids = split["train"][: config.max_train_cases]

    fingerprints = [c["fingerprint"] for c in json.loads((prep_dir / "fingerprint.json").read_text())["cases"].values() if "fingerprint" in c]
    plan = dataset_meta["preprocess"]
    slices = config.mode == "2d" and dataset_meta["dimensions"] == 3
    levels = len(config.channels) if config.network != "basicunet" else 5
    median = median_shape(fingerprints, plan["spacing"])[: 2 if slices else None]
    patch_size = config.patch_size or plan_patch_size(median, levels=levels)
    if len(patch_size) != (2 if slices else dataset_meta["dimensions"]):
        raise ConfigError(f"train.patch_size: {patch_size} does not fit {'2D slices' if slices else str(dataset_meta['dimensions']) + 'D data'}")
    training_transforms = transforms.training(patch_size, config.augmentation, slices_of_volumes=slices)
    train_set = CacheDataset(_case_files(prep_dir, manifest, train_ids), training_transforms, progress=False)
    val_set = CacheDataset(_case_files(prep_dir, manifest, split["validation"]), transforms.validation(), progress=False)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=len(train_set) > config.batch_size)
    val_loader = DataLoader(val_set, batch_size=1)

    description = describe(params, labels, dataset_meta["modality"], plan, patch_size, dataset_meta["label_values"], 2 if slices else None)
    network = build_network(description["network"]).to(device)
    loss_function = build_loss(config.loss, config.loss_options, deep_supervision=config.network == "dynunet" and config.deep_supervision).to(device)
    optimizer = build_optimizer(network.parameters(), config)
    scheduler = build_schedule(optimizer, config)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    step_network = torch.compile(network) if config.compile and device.type == "cuda" else network

    checkpoint_path = out_dir / CHECKPOINT_FILE
    fingerprint = _fingerprint(params, prep_dir / "manifest.csv", Path(split_json))
    state = load_checkpoint(checkpoint_path, fingerprint)
    progress, run_id = Progress(), None
    if state:
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"], training_transforms)
        progress, run_id = Progress(**state["progress"]), state["mlflow_run_id"]
        log.warning("resuming from %s after epoch %d", checkpoint_path, progress.epoch)

    foreground = [name for key, name in sorted(labels.items(), key=lambda kv: int(kv[0])) if key != "0"]
    with tracking.start(params.mlflow.experiment, run_id=run_id) as run:
        if state is None:
            mlflow.log_params(flatten(params))
            mlflow.set_tags({**tracking.provenance_tags(), "dataset": dataset_meta["name"], "device": device.type})
            tracking.log_dataset(manifest.reset_index(), source=prep_dir, name=dataset_meta["name"])
            for record in ("fingerprint.json", "plan.json", "validation.csv"):
                mlflow.log_artifact(str(prep_dir / record), artifact_path="data")
        write_json(out_dir / RUN_FILE, {"run_id": run.info.run_id, "experiment": params.mlflow.experiment})
        while progress.epoch < config.epochs and not progress.stopped:
            started = time.monotonic()
            progress.epoch += 1
            bar = tqdm(train_loader, desc=f"epoch {progress.epoch}/{config.epochs}", unit="batch", leave=False)
            mean_loss = train_one_epoch(step_network, bar, loss_function, optimizer, scaler, device)
            scheduler.step()
            progress.minutes += (time.monotonic() - started) / 60
            record: dict[str, float] = {"epoch": progress.epoch, "train_loss": mean_loss, "lr": scheduler.get_last_lr()[0]}
            last = progress.epoch == config.epochs or bool(_stop_reason(progress, config))
            if progress.epoch % config.val_every == 0 or last:
                dice = validation_dice(network, val_loader, description, device)
                record.update({f"val_dice_{name}": float(d) for name, d in zip(foreground, dice)})
                record["val_dice_mean"] = float(dice.nanmean())
                _record_validation(progress, record["val_dice_mean"], network)
            progress.history.append(record)
            progress.stopped = _stop_reason(progress, config)
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=progress.epoch)
            log.info("epoch %d: %s", progress.epoch, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
            write_csv(out_dir / HISTORY_FILE, pd.DataFrame(progress.history))
            save_checkpoint(
                checkpoint_path,
                {
                    "fingerprint": fingerprint,
                    "network": network.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng_state(training_transforms),
                    "progress": asdict(progress),
                    "mlflow_run_id": run.info.run_id,
                },
            )
        if progress.stopped:
            log.warning("stopped after epoch %d: %s", progress.epoch, progress.stopped)
        if config.keep == "best" and progress.best_weights is not None:
            network.load_state_dict(progress.best_weights)
        description["provenance"] = {
            "mlflow_run_id": run.info.run_id,
            "git_commit": tracking.git_commit()[0],
            "epochs": progress.epoch,
            "kept": f"best (epoch {progress.best_epoch})" if config.keep == "best" else "last",
            "stopped": progress.stopped,
            "final_val_dice": {k: v for k, v in progress.history[-1].items() if k.startswith("val_dice")},
            "params": params.model_dump(),
        }
        save_model(out_dir / MODEL_FILE, network, description)
        mlflow.log_artifact(str(out_dir / MODEL_FILE), artifact_path="model")
        mlflow.log_artifact(str(out_dir / HISTORY_FILE))
        mlflow.log_metrics({"train_minutes": progress.minutes, "best_val_dice_mean": progress.best_dice, "best_epoch": progress.best_epoch})
    checkpoint_path.unlink()  # the run is complete; a later run must not resume from it
    return progress.history[-1]
