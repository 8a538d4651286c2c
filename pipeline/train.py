"""Stage 4: train the U-Net, log the run to MLflow, and write the self-describing model."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from monai.data import CacheDataset, DataLoader
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.utils import set_determinism
from tqdm import tqdm

from pipeline import tracking, transforms
from pipeline.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from pipeline.config import Params, flatten
from pipeline.errors import ConfigError
from pipeline.files import write_csv, write_json
from pipeline.inference import sliding_window_logits
from pipeline.model import build_network, describe, save_model
from pipeline.plan import median_shape, plan_patch_size

log = logging.getLogger(__name__)
MODEL_FILE, HISTORY_FILE, RUN_FILE, CHECKPOINT_FILE = "model.pt", "history.csv", "mlflow_run.json", "checkpoint.pt"


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


def train_one_epoch(network: torch.nn.Module, batches: tqdm, loss_function, optimizer, device: torch.device) -> float:
    """One pass over the training data; returns the mean loss."""
    network.train()
    losses = []
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(network(batch["image"].to(device)), batch["label"].to(device))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        batches.set_postfix(loss=f"{loss.item():.4f}")
    return sum(losses) / len(losses)


def train(prep_dir: Path, split_json: Path, out_dir: Path, params: Params) -> dict[str, Any]:
    prep_dir, out_dir = Path(prep_dir), Path(out_dir)
    config = params.train
    set_determinism(seed=params.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    dataset_meta = json.loads((prep_dir / "dataset.json").read_text())
    if dataset_meta["dimensions"] != 3:
        raise ConfigError(f"{prep_dir}: a {dataset_meta['dimensions']}D dataset; only 3D training is implemented so far")
    labels = dataset_meta["labels"]
    manifest = pd.read_csv(prep_dir / "manifest.csv", dtype={"case_id": str}).set_index("case_id")
    split = json.loads(Path(split_json).read_text())
    train_ids = split["train"][: config.max_train_cases]

    fingerprints = [c["fingerprint"] for c in json.loads((prep_dir / "fingerprint.json").read_text())["cases"].values() if "fingerprint" in c]
    plan = dataset_meta["preprocess"]
    patch_size = config.patch_size or plan_patch_size(median_shape(fingerprints, plan["spacing"]), levels=len(config.channels))
    training_transforms = transforms.training(patch_size, config.augmentation)
    train_set = CacheDataset(_case_files(prep_dir, manifest, train_ids), training_transforms, progress=False)
    val_set = CacheDataset(_case_files(prep_dir, manifest, split["validation"]), transforms.validation(), progress=False)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=len(train_set) > config.batch_size)
    val_loader = DataLoader(val_set, batch_size=1)

    description = describe(params, labels, dataset_meta["modality"], plan, patch_size, dataset_meta["label_values"])
    network = build_network(description["network"]).to(device)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)

    checkpoint_path = out_dir / CHECKPOINT_FILE
    fingerprint = _fingerprint(params, prep_dir / "manifest.csv", Path(split_json))
    state = load_checkpoint(checkpoint_path, fingerprint)
    history: list[dict[str, float]] = []
    first_epoch, run_id = 1, None
    if state:
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"], training_transforms)
        history, first_epoch, run_id = state["history"], state["epoch"] + 1, state["mlflow_run_id"]
        log.warning("resuming from %s at epoch %d", checkpoint_path, first_epoch)

    foreground = [name for key, name in sorted(labels.items(), key=lambda kv: int(kv[0])) if key != "0"]
    with tracking.start(params.mlflow.experiment, run_id=run_id) as run:
        if state is None:
            mlflow.log_params(flatten(params))
            mlflow.set_tags({**tracking.provenance_tags(), "dataset": dataset_meta["name"]})
            tracking.log_dataset(manifest.reset_index(), source=prep_dir, name=dataset_meta["name"])
            for record in ("fingerprint.json", "plan.json", "validation.csv"):
                mlflow.log_artifact(str(prep_dir / record), artifact_path="data")
        write_json(out_dir / RUN_FILE, {"run_id": run.info.run_id, "experiment": params.mlflow.experiment})
        started = time.monotonic()
        for epoch in range(first_epoch, config.epochs + 1):
            bar = tqdm(train_loader, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False)
            mean_loss = train_one_epoch(network, bar, loss_function, optimizer, device)
            scheduler.step()
            record: dict[str, float] = {"epoch": epoch, "train_loss": mean_loss, "lr": scheduler.get_last_lr()[0]}
            if epoch % config.val_every == 0 or epoch == config.epochs:
                dice = validation_dice(network, val_loader, description, device)
                record.update({f"val_dice_{name}": float(d) for name, d in zip(foreground, dice)})
                record["val_dice_mean"] = float(dice.nanmean())
            history.append(record)
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
            write_csv(out_dir / HISTORY_FILE, pd.DataFrame(history))
            save_checkpoint(
                checkpoint_path,
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "network": network.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(training_transforms),
                    "history": history,
                    "mlflow_run_id": run.info.run_id,
                },
            )
        description["provenance"] = {
            "mlflow_run_id": run.info.run_id,
            "git_commit": tracking.git_commit()[0],
            "epochs": config.epochs,
            "final_val_dice": {k: v for k, v in history[-1].items() if k.startswith("val_dice")},
            "params": params.model_dump(),
        }
        save_model(out_dir / MODEL_FILE, network, description)
        mlflow.log_artifact(str(out_dir / MODEL_FILE), artifact_path="model")
        mlflow.log_artifact(str(out_dir / HISTORY_FILE))
        mlflow.log_metric("train_minutes", (time.monotonic() - started) / 60)
    checkpoint_path.unlink()  # the run is complete; a later run must not resume from it
    return history[-1]
