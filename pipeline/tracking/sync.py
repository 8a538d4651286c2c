"""``medseg runs sync``: the operations that ``offline.RunLog`` kept on disk while the tracking server was away,
replayed in order onto their runs (or onto a run created for one the server never saw); see ``offline`` for the
hand-over protocol between a writer and a sync."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from pipeline.files import write_json
from pipeline.tracking.offline import (
    APPEND_LOCK,
    LOCAL_PREFIX,
    SYNC_LOCK,
    SYNCED_FILE,
    TAKEN,
    _locked,
    _send,
    _synced,
    experiment_id,
)
from pipeline.tracking.runs import (
    configure,
)

Deferred = Callable[[str, dict[str, Any], Path], None]  # (MLflow run id, the operation, the folder of its files)


def sync(pending_dir: Path, deferred: dict[str, Deferred] | None = None) -> list[tuple[str, str, int]]:
    """Upload every pending run in ``pending_dir``; returns (pending id, MLflow run id, operations sent) each.
    ``deferred`` carries out the operations that ``RunLog.defer`` kept, by kind. Safe beside a training that still
    appends, and beside another sync: what either finds is sent once."""
    pending_dir = Path(pending_dir)
    if not pending_dir.is_dir():
        return []
    client = MlflowClient(configure())
    sent: dict[str, tuple[str, int]] = {}
    with _locked(pending_dir / SYNC_LOCK):
        for file in _take(pending_dir):
            key = file.name.split(".")[0]
            run_id, count = _replay(client, pending_dir, file, deferred or {})
            sent[key] = (run_id, sent.get(key, ("", 0))[1] + count)
    return [(key, run_id, count) for key, (run_id, count) in sent.items()]


def _take(pending_dir: Path) -> list[Path]:
    """Hand the pending files over to this sync, under the writers' lock: a writer's next line starts a new file.
    Files handed over to a sync that stopped part-way come first (names sort by run, then by hand-over time)."""
    with _locked(pending_dir / APPEND_LOCK):
        for file in pending_dir.glob("*.jsonl"):
            file.rename(pending_dir / f"{file.stem}.{time.time_ns():020d}{TAKEN}")
    return sorted(pending_dir.glob(f"*{TAKEN}"))


def _replay(client: MlflowClient, pending_dir: Path, file: Path, deferred: dict[str, Deferred]) -> tuple[str, int]:
    """Send one handed-over file's operations from where an earlier sync stopped; returns the run id and how many
    were sent. Progress is kept per line, so a failure part-way resends nothing the next time."""
    key, progress_file = file.name.split(".")[0], file.with_suffix(".sent")
    ops = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    sent = int(progress_file.read_text()) if progress_file.is_file() else 0
    run_id = _synced(pending_dir).get(key) or (None if key.startswith(LOCAL_PREFIX) else key)
    for index in range(sent, len(ops)):
        op = ops[index]
        if op["op"] == "create":
            run_id = run_id or _create(client, pending_dir, key, op)
        elif op["op"] in deferred:
            deferred[op["op"]](run_id, op, pending_dir)
        else:
            _send(client, run_id, op, pending_dir)
        progress_file.write_text(str(index + 1))
    _forget_files(pending_dir, ops)
    file.unlink()
    progress_file.unlink(missing_ok=True)
    return run_id, len(ops) - sent


def _create(client: MlflowClient, pending_dir: Path, key: str, op: dict[str, Any]) -> str:
    """The MLflow run of a run the server never saw, recorded so that its later lines (and resumption) find it."""
    experiment = experiment_id(client, op["experiment"])
    run_id = client.create_run(experiment, start_time=op["start_time"], run_name=op.get("run_name")).info.run_id
    write_json(pending_dir / SYNCED_FILE, {**_synced(pending_dir), key: run_id})
    return run_id


def _forget_files(pending_dir: Path, ops: list[dict[str, Any]]) -> None:
    """Delete the copies that these operations used (a writer may be keeping others for its later lines)."""
    kept = [
        name for op in ops for name in [op.get("file"), *op.get("files", [])] if name and not Path(name).is_absolute()
    ]
    with _locked(pending_dir / APPEND_LOCK):
        for name in kept:
            (pending_dir / name).unlink(missing_ok=True)
            for folder in ((pending_dir / name).parent, (pending_dir / name).parent.parent):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only once empty
