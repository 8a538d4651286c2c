"""``medseg train``: the trainer handed an MLflow run log that outlives its server (``tracking.offline``)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.tracking.offline import PENDING_DIR, logged_run
from pipeline.training import trainer


def train(prep_dir: Path, split_json: Path, out_dir: Path, params: Params) -> dict[str, Any]:
    """The last epoch's record; the run's pending files, if the server goes away, under OUT_DIR/mlflow_pending."""
    open_run = partial(logged_run, Path(out_dir) / PENDING_DIR, params.mlflow.experiment)
    return trainer.train(prep_dir, split_json, out_dir, params, open_run)
