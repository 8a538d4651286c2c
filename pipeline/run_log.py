"""What training and evaluation write a run's record through. They are handed one (``tracking.offline.RunLog``,
MLflow's, from ``pipeline.stages``) and never import tracking, so that they run, and are tested, without a store."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import pandas as pd


class RunLogger(Protocol):
    run_id: str

    def log_params(self, params: dict[str, Any]) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def log_dataset(self, table: pd.DataFrame, source: Path, name: str, context: str = "training") -> None: ...

    def start_system_metrics(self) -> None: ...


# opens a new run (None) or continues the one with that id, and closes it with the outcome of the block
OpenRun = Callable[[str | None], AbstractContextManager[RunLogger]]
