"""Model files behind MLflow URIs: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` and ``runs:/ID/model``
downloaded to the self-describing model file, so that nothing below tracking reads MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow

from pipeline.errors import ModelError
from pipeline.tracking.runs import configure, describe_error

MODEL_URI_SCHEMES = ("models:/", "runs:/")


def is_model_uri(text: str) -> bool:
    return str(text).startswith(MODEL_URI_SCHEMES)


def local_model_file(model: Path | str) -> Path:
    """``model`` itself, or where it is an MLflow URI the model file downloaded from it (every Ray worker then
    loads that same file)."""
    if is_model_uri(str(model)):
        return download_model_file(str(model))
    return Path(model)


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
