"""The model registry: each evaluated model registered per dataset, the best on the same validation split holding
alias ``champion`` and the latest one that did not beat it ``challenger``; ``models:/`` and ``runs:/`` URIs resolved
back to a self-describing model file."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.errors import ModelError
from pipeline.tracking.offline import RunLog
from pipeline.tracking.provenance import SPLIT_TAG
from pipeline.tracking.runs import configure, describe_error

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
SCORE = "eval_dice_mean"  # the evaluation's mean Dice over classes and validation cases
MODEL_URI_SCHEMES = ("models:/", "runs:/")
MODEL_NAME = "model"  # the MLflow model's name in its run (runs:/<id>/model)


def registered_name(configured: str | None, dataset: str) -> str:
    """``configured``, or ``medseg-<dataset>`` in lower case with dashes (``medseg-hippocampus``)."""
    return configured or "medseg-" + "-".join(dataset.lower().split())


@dataclass
class Decision:
    model: str
    version: str
    alias: str
    reason: str
    score: float
    champion_score: float | None


def _input_example(network: torch.nn.Module, patch_size: list[int]) -> tuple[np.ndarray, np.ndarray]:
    example = np.zeros((1, 1, *patch_size), dtype=np.float32)
    with torch.no_grad():
        output = network(torch.from_numpy(example).to(next(network.parameters()).device))
    return example, output.float().cpu().numpy()


def _log_model(run_id: str, network: torch.nn.Module, model_file: Path, patch_size: list[int], name: str) -> str:
    """An MLflow PyTorch model (signature, input example) with ``model.pt`` inside; returns its version."""
    example, output = _input_example(network, patch_size)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            network,
            name=MODEL_NAME,
            signature=mlflow.models.infer_signature(example, output),
            input_example=example,
            extra_files=[str(model_file)],
            pip_requirements=[f"torch=={torch.__version__}", f"monai=={version('monai')}"],
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def _champion(client: MlflowClient, name: str) -> tuple[object | None, float | None, str | None]:
    """The version holding ``champion``, its score and its validation split's hash (None where there is none)."""
    try:
        holder = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None, None
    data = client.get_run(holder.run_id).data
    return holder, data.metrics.get(SCORE), data.tags.get(SPLIT_TAG)


def _decide(holder, champion_score: float | None, champion_split: str | None, score: float, split: str, version: str):
    if holder is None:
        return CHAMPION, "no champion yet"
    if str(holder.version) == version:
        return CHAMPION, "holds it already"
    if champion_split != split:
        return CHALLENGER, f"champion (version {holder.version}) was evaluated on another validation split"
    if champion_score is None or score > champion_score:
        return CHAMPION, f"{SCORE} {score:.4f} beats version {holder.version}'s {champion_score}"
    return CHALLENGER, f"{SCORE} {score:.4f} does not beat version {holder.version}'s {champion_score:.4f}"


def register(
    run: RunLog, network: torch.nn.Module, model_file: Path, patch_size: list[int], name: str, score: float, split: str
) -> Decision | None:
    """Register the run's model under ``name``; it takes ``champion`` if it beats the holder on the same validation
    split (``split``: its hash), else ``challenger``. The decision and both scores go to the run."""
    if not run.online:
        log.warning("%s not registered: the tracking server did not answer during this run", name)
        run.set_tags({"registry.decision": "not registered: tracking server unreachable"})
        return None
    client = run.client
    model_version = _log_model(run.run_id, network, model_file, patch_size, name)
    for _ in range(3):  # MLflow has no compare-and-set: look again in case a concurrent run moved the alias
        holder, champion_score, champion_split = _champion(client, name)
        alias, reason = _decide(holder, champion_score, champion_split, score, split, model_version)
        client.set_registered_model_alias(name, alias, model_version)
        time.sleep(random.uniform(0.2, 0.6))
        now = _champion(client, name)[0]
        if alias == CHALLENGER or (now is not None and str(now.version) == model_version):
            break
    decision = Decision(name, model_version, alias, reason, score, champion_score)
    run.set_tags({f"registry.{k}": v for k, v in asdict(decision).items() if k not in ("score", "champion_score")})
    run.log_metrics(
        {"registry.score": score, **({"registry.champion_score": champion_score} if champion_score is not None else {})}
    )
    log.info("registered %s version %s as %s: %s", name, model_version, alias, reason)
    return decision


def is_model_uri(text: str) -> bool:
    return str(text).startswith(MODEL_URI_SCHEMES)


def download_model_file(uri: str) -> Path:
    """The ``model.pt`` that a ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/ID/model`` URI holds."""
    tracking_uri = configure()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as err:  # MLflow raises several types for an unknown name, alias, version or run
        raise ModelError(f"{uri}: does not resolve in MLflow at {tracking_uri} ({describe_error(err)[:300]})") from None
    found = sorted(local.rglob("model.pt")) if local.is_dir() else [local]
    if not found:
        raise ModelError(f"{uri}: resolves in MLflow at {tracking_uri}, but holds no model.pt")
    return found[0]
