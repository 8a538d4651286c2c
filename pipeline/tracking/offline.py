"""A run's log that outlives its tracking server.

Everything goes to MLflow while it answers. The first call that fails (server unreachable, too slow, gone
mid-training) is reported once; from then on this process appends what it would have sent to
``<models>/mlflow_pending/<run>.jsonl`` (files copied beside it), and training goes on. ``medseg runs sync``
replays those lines, in order, onto the same run (or creates it, for a run that never reached the server).

A training may still be appending while sync runs: a line is appended, and a pending file handed over to sync (renamed
``<run>.<time>.taken``), only under one lock, so the writer's next line starts a new file and nothing falls between
the two. One sync runs at a time per folder, and each handed-over file records how far it was sent, so a sync that
stops part-way, or runs twice, sends every line once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException, RestException

from pipeline.tracking.runs import (
    ERROR_TAG,
    LAST_EPOCH_TAG,
    configure,
    describe_error,
    final_status,
    sigterm_as_interrupt,
)

log = logging.getLogger(__name__)

PENDING_DIR = "mlflow_pending"
LOCAL_PREFIX = "pending-"  # a run id made up here, for a run the server never saw
SYNCED_FILE = "synced.json"  # local run ids and the MLflow run ids that sync gave them
APPEND_LOCK = ".append.lock"  # held to append a line or keep a file, and to hand pending files over to sync
SYNC_LOCK = ".sync.lock"  # held by the one sync of a folder
TAKEN = ".taken"  # a pending file handed over to sync: the writer's next line starts a new one
BATCH = 100  # MLflow's limit of params per log_batch


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed), between processes and between threads alike."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _synced(pending_dir: Path) -> dict[str, str]:
    path = pending_dir / SYNCED_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, created if needed (two processes creating it at once both get it)."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        return client.get_experiment_by_name(name).experiment_id


def _batches(items: list, size: int = BATCH):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _send(client: MlflowClient, run_id: str, op: dict[str, Any], files: Path) -> None:
    """Apply one logged operation to MLflow; ``files`` holds the copies of pending artifacts."""
    kind = op["op"]
    if kind == "params":
        for batch in _batches([Param(k, str(v)) for k, v in op["params"].items()]):
            client.log_batch(run_id, params=batch)
    elif kind == "tags":
        for batch in _batches([RunTag(k, str(v)) for k, v in op["tags"].items()]):
            client.log_batch(run_id, tags=batch)
    elif kind == "metrics":
        metrics = [Metric(k, float(v), op["timestamp"], op["step"]) for k, v in op["metrics"].items()]
        for batch in _batches(metrics, 1000):
            client.log_batch(run_id, metrics=batch)
    elif kind == "artifact":
        source = files / op["file"] if not Path(op["file"]).is_absolute() else Path(op["file"])
        client.log_artifact(run_id, str(source), op.get("artifact_path"))
    elif kind == "dataset":
        frame = pd.read_csv(files / op["file"], dtype={"case_id": str})
        context = InputTag("mlflow.data.context", op["context"])
        with warnings.catch_warnings():  # MLflow's hints about schema inference do not apply to a case table
            warnings.simplefilter("ignore")
            dataset = mlflow.data.from_pandas(frame, source=op["source"], name=op["name"])
            client.log_inputs(run_id, [DatasetInput(Dataset(**dataset.to_dict()), [context])])
    elif kind == "end":
        client.set_terminated(run_id, op["status"], op["end_time"])
    else:
        raise ValueError(f"unknown pending operation {kind!r}")


class RunLog:
    """One MLflow run, written through the tracking server while it answers and to pending files after."""

    def __init__(self, pending_dir: Path, experiment: str, run_id: str | None = None, run_name: str | None = None):
        self.pending_dir = Path(pending_dir)
        self.experiment = experiment
        self.uri = configure()
        self.client = MlflowClient(self.uri)
        self.online = True
        self._sampling = False  # MLflow's system metrics sampler runs for this run
        self._last_step = 0  # the last epoch logged, recorded on a run that dies
        if run_id:
            run_id = _synced(self.pending_dir).get(run_id, run_id)
            if run_id.startswith(LOCAL_PREFIX):  # the server never saw it: keep its lines together
                self.online = False
                log.warning("MLflow run %s is still pending in %s: run `medseg runs sync`", run_id, self.pending_dir)
            self.run_id = run_id
            return
        try:
            self.run_id = self.client.create_run(experiment_id(self.client, experiment), run_name=run_name).info.run_id
        except Exception as err:  # any failure of the store: training must go on
            self.run_id = f"{LOCAL_PREFIX}{uuid.uuid4().hex}"
            self._go_offline(err)
            self._append({"op": "create", "experiment": experiment, "run_name": run_name, "start_time": _now_ms()})

    @property
    def pending_file(self) -> Path:
        return self.pending_dir / f"{self.run_id}.jsonl"

    def _go_offline(self, error: BaseException) -> None:
        self.online = False
        log.warning(
            "MLflow at %s did not answer (%s); this run's metrics and files are kept in %s "
            "and `medseg runs sync` uploads them when it is back",
            self.uri,
            describe_error(error)[:300],
            self.pending_dir,
        )

    def _append(self, op: dict[str, Any]) -> None:
        with _locked(self.pending_dir / APPEND_LOCK), self.pending_file.open("a") as handle:
            handle.write(json.dumps(op) + "\n")

    def _sent(self, send: Callable[[], None], what: str) -> bool:
        """Whether ``send`` reached MLflow. A server that answers with an error (a concurrent run inserting the same
        dataset or experiment) is asked once more; one that does not answer puts this run offline."""
        if not self.online:
            return False
        for attempt in range(2):
            try:
                send()
                return True
            except RestException as err:
                if attempt:
                    log.warning("MLflow refused %s (%s); kept in %s", what, describe_error(err)[:300], self.pending_dir)
                    return False
                time.sleep(0.5)
            except Exception as err:  # unreachable, timed out, or an error of the store
                self._go_offline(err)
                return False
        return False

    def _log(self, op: dict[str, Any]) -> None:
        if not self._sent(lambda: _send(self.client, self.run_id, op, self.pending_dir), op["op"]):
            self._append(op)

    def _keep(self, name: str, write: Callable[[Path], Any]) -> str:
        """A file that ``write`` makes in the pending folder, under the lock that sync's clean-up takes."""
        relative = Path(self.run_id) / uuid.uuid4().hex[:8] / name
        with _locked(self.pending_dir / APPEND_LOCK):
            (self.pending_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            write(self.pending_dir / relative)
        return str(relative)

    def _keep_file(self, path: Path) -> str:
        """A copy of ``path`` in the pending folder (the original may be rewritten before sync)."""
        return self._keep(Path(path).name, lambda target: shutil.copy2(path, target))

    def log_params(self, params: dict[str, Any]) -> None:
        self._log({"op": "params", "params": {k: str(v) for k, v in params.items()}})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._log({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self._last_step = max(self._last_step, step)
        self._log({"op": "metrics", "metrics": metrics, "step": step, "timestamp": _now_ms()})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self._sent(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path), str(path)):
            return
        self._append({"op": "artifact", "file": self._keep_file(Path(path)), "artifact_path": artifact_path})

    def defer(self, op: dict[str, Any], *files: Path) -> None:
        """An operation only ``medseg runs sync`` can carry out (with a handler passed to ``sync``), with copies of
        the files it needs, listed in order as ``op["files"]``."""
        self._append({**op, "files": [self._keep_file(Path(f)) for f in files]})

    def log_dataset(self, table: pd.DataFrame, source: Path, name: str, context: str = "training") -> None:
        """The case table as the run's input, with MLflow's content digest."""
        op = {"op": "dataset", "source": str(source), "name": name, "context": context}
        if self.online:
            with tempfile.TemporaryDirectory() as scratch:
                table.to_csv(Path(scratch) / f"{name}.csv", index=False)
                if self._sent(
                    lambda: _send(self.client, self.run_id, {**op, "file": f"{name}.csv"}, Path(scratch)), name
                ):
                    return
        relative = self._keep(f"{name}.csv", lambda target: table.to_csv(target, index=False))
        self._append({**op, "file": relative})

    def start_system_metrics(self) -> None:
        """MLflow's sampler of CPU, memory, disk, network (and GPU) into ``system/*`` metrics, every 10 s
        (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``), while online. MLflow's public way to it is a fluent run with
        ``log_system_metrics``; MLflow continues a resumed run's steps by itself."""
        if not self.online:
            return
        try:
            mlflow.start_run(run_id=self.run_id, log_system_metrics=True)
            self._sampling = True
        except Exception as err:  # another fluent run in this thread, or the store: the run goes on without them
            log.warning("no system metrics for run %s: %s", self.run_id, describe_error(err)[:300])

    def _stop_system_metrics(self, status: str) -> None:
        """End the fluent run, which flushes the sampler's last samples. Offline, MLflow takes the run off this
        thread's stack before it fails to reach the server, and the sampler's thread stops at its next failed look."""
        if not self._sampling:
            return
        self._sampling = False
        try:
            mlflow.end_run(status)
        except Exception as err:  # the server is away: the end status is kept with the rest
            log.debug("MLflow's end of run %s failed: %s", self.run_id, describe_error(err)[:300])

    def end(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        """Close the run; one that died records its error and the last epoch it logged (kept for sync offline)."""
        self._stop_system_metrics(status)
        if error is not None:
            self.set_tags({ERROR_TAG: describe_error(error), LAST_EPOCH_TAG: self._last_step})
        self._log({"op": "end", "status": status, "end_time": _now_ms()})


@contextlib.contextmanager
def logged_run(pending_dir: Path, experiment: str, run_id: str | None = None) -> Iterator[RunLog]:
    """A RunLog that ends FINISHED, or KILLED (Ctrl-C, SIGTERM) or FAILED with the error as its ``error`` tag."""
    run = RunLog(pending_dir, experiment, run_id)
    try:
        with sigterm_as_interrupt():
            yield run
    except BaseException as err:
        run.end(final_status(err), err)
        raise
    run.end()
