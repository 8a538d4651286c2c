"""MLflow: where runs go, and the provenance each run carries (git commit, DVC data hash)."""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path

import mlflow
import pandas as pd
import yaml

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RAW_DATA = "data/raw"


def start(experiment: str, run_id: str | None = None, run_name: str | None = None) -> mlflow.ActiveRun:
    """Open (or reopen) a run on ``MLFLOW_TRACKING_URI``, by default an SQLite file in the working directory."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    if run_id is None:
        mlflow.set_experiment(experiment)
    return mlflow.start_run(run_id=run_id, run_name=run_name)


def git_commit() -> tuple[str | None, bool]:
    """HEAD's commit and whether the working tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return commit, bool(status.stdout.strip())


def dvc_output_hash(output: str = RAW_DATA, lock_file: Path = Path("dvc.lock")) -> str | None:
    """The hash DVC recorded for a stage output, read from ``dvc.lock``."""
    if not lock_file.is_file():
        return None
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") == output:
                return out.get("md5") or out.get("hash")
    return None


def provenance_tags() -> dict[str, str]:
    commit, dirty = git_commit()
    tags = {"git.dirty": str(dirty).lower()}
    if commit:
        tags["mlflow.source.git.commit"] = commit
    data_hash = dvc_output_hash()
    if data_hash:
        tags["dvc.raw_data_md5"] = data_hash
    return tags


def log_dataset(manifest: pd.DataFrame, source: Path, name: str) -> None:
    """Record the case table as the run's training input, with MLflow's content digest."""
    with warnings.catch_warnings():  # MLflow's hints about schema inference do not apply to a case table
        warnings.simplefilter("ignore")
        mlflow.log_input(mlflow.data.from_pandas(manifest, source=str(source), name=name), context="training")
