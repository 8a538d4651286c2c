"""The tracking server is not the critical path: a real `mlflow server` killed mid-training loses nothing."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import mlflow
import pandas as pd
import pytest
import torch

from pipeline.data.preprocess import preprocess
from pipeline.data.split import split
from pipeline.networks.model import load_model
from pipeline.stages.evaluate import DEFERRED, evaluate
from pipeline.stages.train import train as train_stage
from pipeline.tracking.models import local_model_file
from pipeline.tracking.offline import RunLog, logged_run
from pipeline.tracking.sync import sync

# trainings, MLflow stores or Ray workers: `make test` runs these, `make test-fast` leaves them out
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(root, port: int, backend: str | None = None) -> subprocess.Popen:
    """`mlflow server` on loopback, serving artifacts from a local folder; waits until it answers."""
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", backend or f"sqlite:///{root / 'server.db'}"]
    command += ["--artifacts-destination", str(root / "server-artifacts"), "--workers", "1"]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "ab"), start_new_session=True
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert server.poll() is None, (root / "server.log").read_text()[-3000:]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server
        except OSError:
            time.sleep(0.3)
    stop_server(server)
    raise AssertionError("mlflow server did not answer within 90 s")


def stop_server(server: subprocess.Popen, sig=signal.SIGKILL) -> None:
    if server.poll() is None:
        os.killpg(server.pid, sig)  # the server and its workers: a session of their own
    server.wait()


@pytest.fixture
def prepared(hippocampus, tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preprocess(hippocampus, tmp_path / "prep", tiny_params.data, tiny_params.preprocess)
    split(tmp_path / "prep" / "manifest.csv", tmp_path / "split.json", tiny_params.split, tiny_params.seed)
    return tmp_path


def _run_id(models):
    return json.loads((models / "mlflow_run.json").read_text())["run_id"]


def test_a_server_killed_mid_training_loses_nothing_and_sync_uploads_every_epoch(
    prepared, tiny_params, monkeypatch, caplog
):
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    server = start_server(prepared, port)
    models = prepared / "models"
    params = tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update={"epochs": 4})})

    def kill_after_the_first_epoch():
        while not (models / "history.csv").exists():
            time.sleep(0.02)
        stop_server(server)

    killer = threading.Thread(target=kill_after_the_first_epoch)
    killer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline.tracking.offline"):
            train_stage(prepared / "prep", prepared / "split.json", models, params)
    finally:
        killer.join(timeout=60)
        stop_server(server)

    history = pd.read_csv(models / "history.csv")
    assert list(history.epoch) == [1, 2, 3, 4] and (models / "model.pt").is_file()
    pending = list((models / "mlflow_pending").glob("*.jsonl"))
    assert [p.stem for p in pending] == [_run_id(models)]
    steps = {op["step"] for op in map(json.loads, pending[0].read_text().splitlines()) if op["op"] == "metrics"}
    assert 1 not in steps and 4 in steps, "epoch 1 reached the server; the later ones waited on disk"
    assert sum("did not answer" in r.message for r in caplog.records) == 1, "reported once, not per epoch"

    server = start_server(prepared, port)  # back, on the same store
    try:
        sent = sync(models / "mlflow_pending")
        assert [run_id for _, run_id, _ in sent] == [_run_id(models)]
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        run = client.get_run(_run_id(models))
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3, 4]
        dice = client.get_metric_history(run.info.run_id, "val_dice_mean")
        assert [m.value for m in sorted(dice, key=lambda m: m.step)] == pytest.approx(list(history.val_dice_mean))
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"model", "history.csv", "inputs", "data"} <= artifacts
        assert "best_val_dice_mean" in run.data.metrics
        assert not list((models / "mlflow_pending").glob("*.jsonl")), "what was sent is no longer pending"
    finally:
        stop_server(server)


def test_a_run_that_never_reached_the_server_is_created_by_sync(prepared, tiny_params, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    models = prepared / "models"
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking.offline"):
        train_stage(prepared / "prep", prepared / "split.json", models, tiny_params)
    local_id = _run_id(models)
    assert local_id.startswith("pending-") and (models / "model.pt").is_file()
    assert sum("did not answer" in r.message for r in caplog.records) == 1

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{prepared / 'mlflow.db'}")
    [(key, run_id, _)] = sync(models / "mlflow_pending")
    assert key == local_id
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    assert client.get_experiment(run.info.experiment_id).name == "medseg"
    assert run.inputs.dataset_inputs[0].dataset.name == "Hippocampus"


def test_a_model_evaluated_while_the_server_was_away_is_registered_by_sync(prepared, tiny_params, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    models = prepared / "models"
    train_stage(prepared / "prep", prepared / "split.json", models, tiny_params)
    summary = evaluate(
        models / "model.pt",
        prepared / "prep",
        prepared / "split.json",
        prepared / "reports",
        models / "mlflow_run.json",
    )
    [pending] = (models / "mlflow_pending").glob("*.jsonl")
    assert [json.loads(line)["op"] for line in pending.read_text().splitlines()][-1] == "register"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{prepared / 'mlflow.db'}")
    [(_, run_id, _)] = sync(models / "mlflow_pending", DEFERRED)
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("medseg-hippocampus", "champion")
    assert champion.run_id == run_id
    tags = client.get_run(run_id).data.tags
    assert tags["registry.alias"] == "champion" and tags["registry.decision"].startswith("deferred")
    assert client.get_run(run_id).data.metrics["registry.score"] == pytest.approx(summary["dice_mean"])
    network, _ = load_model(local_model_file("models:/medseg-hippocampus@champion"))
    expected = load_model(models / "model.pt")[0].state_dict()
    assert all(torch.equal(expected[k], v) for k, v in network.state_dict().items())


def _offline_run(pending, monkeypatch, **kwargs):
    """A RunLog whose server never answered, then MLflow pointed at a store that sync can reach."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    return RunLog(pending, "offline", **kwargs)


def _synced_id(pending, run):
    return json.loads((pending / "synced.json").read_text())[run.run_id]


def test_records_appended_while_sync_runs_in_a_loop_arrive_exactly_once(tmp_path, monkeypatch):
    pending, epochs = tmp_path / "pending", 150
    run = _offline_run(pending, monkeypatch)
    assert not run.online
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def training():
        for epoch in range(1, epochs + 1):
            run.log_metrics({"train_loss": 1.0 / epoch}, step=epoch)
            if epoch % 30 == 0:  # files kept beside the lines, while sync deletes those it has sent
                (tmp_path / f"note_{epoch}.txt").write_text(str(epoch))
                run.log_artifact(tmp_path / f"note_{epoch}.txt", artifact_path="notes")
            time.sleep(0.01)
        run.end()

    sync(pending)  # the run created in the store, which is set up on first use
    writer = threading.Thread(target=training)
    writer.start()
    rounds = 0
    while writer.is_alive():
        sync(pending)
        rounds += 1
    writer.join()
    sync(pending)
    assert rounds > 1, "sync ran beside the writer"
    assert sync(pending) == [], "a second sync finds nothing left to send"

    client = mlflow.MlflowClient()
    run_id = _synced_id(pending, run)
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == list(range(1, epochs + 1))
    assert len(client.list_artifacts(run_id, "notes")) == epochs // 30
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not list(pending.glob("pending-*")), "nothing of the run is left pending"


def test_a_run_that_dies_offline_ends_failed_or_killed_with_its_last_epoch_once_synced(tmp_path, monkeypatch):
    pending, ended = tmp_path / "pending", {}
    for error, status in ((RuntimeError("the disk is full"), "FAILED"), (KeyboardInterrupt(), "KILLED")):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
        with pytest.raises(type(error)), logged_run(pending, "offline") as run:
            for epoch in (1, 2, 3):
                run.log_metrics({"train_loss": 1.0 / epoch}, step=epoch)
            raise error
        ended[status] = run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(sync(pending)) == 2
    client = mlflow.MlflowClient()
    for status, run in ended.items():
        synced = client.get_run(_synced_id(pending, run))
        assert synced.info.status == status and synced.data.tags["last_epoch"] == "3"
        assert synced.data.tags["error"].startswith(("RuntimeError: the disk is full", "KeyboardInterrupt"))
