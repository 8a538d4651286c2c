"""Where runs go: the tracking URI, MLflow's quiet logging and bounded HTTP retries, and a run's final status."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

import mlflow

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# a server that does not answer costs seconds, not MLflow's default minutes of retries, before training goes on
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
ERROR_TAG = "error"
LAST_EPOCH_TAG = "last_epoch"  # on a run that died: the last epoch it logged metrics for


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, by default an SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def configure() -> str:
    """Point MLflow at the tracking URI, quieten its loggers and bound its retries; returns the URI."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def start(experiment: str, run_id: str | None = None, run_name: str | None = None) -> mlflow.ActiveRun:
    """Open (or reopen) a run with MLflow's fluent API."""
    configure()
    if run_id is None:
        mlflow.set_experiment(experiment)
    return mlflow.start_run(run_id=run_id, run_name=run_name)


def final_status(error: BaseException | None) -> str:
    """FINISHED, KILLED for an interruption (Ctrl-C, SIGTERM), FAILED for any other error."""
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, KeyboardInterrupt | SystemExit) else "FAILED"


def describe_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().rstrip(":")
    return text[:4000]  # within MLflow's tag value limit


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (what DVC, schedulers and ``kill`` send) raises KeyboardInterrupt, so the run can end as KILLED.
    Only the main thread can install a handler; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
