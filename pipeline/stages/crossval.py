"""Cross-validation: every fold of the split trained and evaluated in turn, each fold an MLflow run nested under one
parent run that carries the mean and standard deviation over folds, as nnU-Net reports a configuration."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from pipeline.config import Params
from pipeline.data.split import split
from pipeline.errors import DatasetError
from pipeline.evaluation.scoring import METRICS_FILE
from pipeline.files import write_csv, write_json
from pipeline.params import flatten
from pipeline.provenance import provenance_tags
from pipeline.stages.evaluate import evaluate, mlflow_metrics
from pipeline.stages.train import train
from pipeline.tracking.offline import PENDING_DIR, RunLog, logged_run
from pipeline.training.trainer import MODEL_FILE, RUN_FILE

log = logging.getLogger(__name__)

FOLDS_FILE = "folds.csv"
SUMMARY_FILE = "crossval.json"
PARENT_TAG = "mlflow.parentRunId"  # how the MLflow UI nests runs


def _fold(prep_dir: Path, fold_dir: Path, params: Params, parent: RunLog) -> dict[str, float]:
    """Split, train and evaluate one fold (each step resumes or is skipped when already done); its metrics."""
    split_json, models, reports = fold_dir / "split.json", fold_dir / "models", fold_dir / "reports"
    metrics_file = reports / METRICS_FILE
    if metrics_file.is_file():
        log.info("%s is done: %s", fold_dir.name, metrics_file)
        return mlflow_metrics(json.loads(metrics_file.read_text()))
    split(prep_dir / "manifest.csv", split_json, params.split, params.seed)
    if not (models / MODEL_FILE).is_file():
        train(prep_dir, split_json, models, params)
    run_file = models / RUN_FILE
    fold_run = RunLog(models / PENDING_DIR, params.mlflow.experiment, json.loads(run_file.read_text())["run_id"])
    fold_run.set_tags({PARENT_TAG: parent.run_id, "mlflow.runName": fold_dir.name.replace("_", " ")})
    summary = evaluate(
        models / MODEL_FILE,
        prep_dir,
        split_json,
        reports,
        run_file,
        params.evaluate,
        tta=params.inference.tta,
        tracking=params.mlflow,
        register_model=False,
    )
    return mlflow_metrics(summary)


def fold_params(params: Params, fold: int) -> Params:
    """``params`` with fold ``fold`` held out; the rest of ``split`` (the grouping included) unchanged, so every fold
    splits the same assignment of cases."""
    return params.model_copy(update={"split": params.split.model_copy(update={"fold": fold})})


def aggregate(per_fold: pd.DataFrame) -> dict[str, float]:
    """``<metric>_mean`` and ``<metric>_std`` (population, as nnU-Net's summary) over the folds."""
    numbers = per_fold.drop(columns="fold")
    return {
        **{f"{name}_mean": float(value) for name, value in numbers.mean().items()},
        **{f"{name}_std": float(value) for name, value in numbers.std(ddof=0).items()},
    }


def cross_validate(prep_dir: Path, out_dir: Path, params: Params) -> dict[str, float]:
    """Train and evaluate folds 0..n_folds-1 into ``out_dir/fold_<k>``; a run killed at any point resumes from
    where it stopped when called again. Writes ``folds.csv`` (one row per fold) and ``crossval.json``."""
    prep_dir, out_dir = Path(prep_dir), Path(out_dir)
    if not (prep_dir / "manifest.csv").is_file():
        raise DatasetError(f"{prep_dir}: no manifest.csv here; preprocess first (dvc repro, or medseg preprocess)")
    parent_file = out_dir / RUN_FILE  # the parent run's id, as train keeps a run's
    parent_id = json.loads(parent_file.read_text())["run_id"] if parent_file.is_file() else None
    rows = []
    with logged_run(out_dir / PENDING_DIR, params.mlflow.experiment, parent_id) as parent:
        if parent_id is None:
            parent.log_params({**flatten(params), "split.fold": "all"})
            parent.set_tags({**provenance_tags(), "mlflow.runName": f"cross-validation ({params.split.n_folds} folds)"})
            write_json(parent_file, {"run_id": parent.run_id, "experiment": params.mlflow.experiment})
        for fold in range(params.split.n_folds):
            metrics = _fold(prep_dir, out_dir / f"fold_{fold}", fold_params(params, fold), parent)
            parent.log_metrics({"fold_eval_dice_mean": metrics["eval_dice_mean"]}, step=fold)
            rows.append({"fold": fold, **metrics})
            log.info("fold %d of %d: eval_dice_mean %.4f", fold, params.split.n_folds, metrics["eval_dice_mean"])
        per_fold = pd.DataFrame(rows)
        summary = aggregate(per_fold)
        write_csv(out_dir / FOLDS_FILE, per_fold)
        write_json(out_dir / SUMMARY_FILE, {"folds": len(rows), **summary})
        parent.log_metrics(summary)
        for name in (FOLDS_FILE, SUMMARY_FILE):
            parent.log_artifact(out_dir / name)
    return summary
