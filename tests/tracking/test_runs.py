"""Every run logs its environment, lineage files and system metrics, and ends with the status it deserves."""

import json

import mlflow
import pytest

import pipeline.training.epoch as epoch_module
from pipeline.data.preprocess import preprocess
from pipeline.data.split import split
from pipeline.stages.train import train as train_stage


@pytest.fixture
def prepared(hippocampus, tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")  # a tiny training lasts about a second
    preprocess(hippocampus, tmp_path / "prep", tiny_params.data, tiny_params.preprocess)
    split(tmp_path / "prep" / "manifest.csv", tmp_path / "split.json", tiny_params.split, tiny_params.seed)
    return tmp_path


def _train(root, params):
    return train_stage(root / "prep", root / "split.json", root / "models", params)


def _run(root):
    return mlflow.MlflowClient().get_run(json.loads((root / "models" / "mlflow_run.json").read_text())["run_id"])


def test_a_run_logs_environment_lineage_and_system_metrics(prepared, tiny_params):
    _train(prepared, tiny_params)
    run = _run(prepared)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["env.torch"].startswith("2.") and params["env.monai"] != "absent"
    assert params["env.cuda"] == "none" and params["env.device"] == "cpu"
    assert params["env.processes"] == "1" and params["env.data_workers"] == "1"
    assert len(run.data.tags["split.validation_sha256"]) == 64
    inputs = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "inputs")}
    assert {"inputs/params.yaml", "inputs/split.json"} <= inputs
    logged_params = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/inputs/params.yaml")
    assert "epochs: 2" in logged_params
    system = [key for key in run.data.metrics if key.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system


def test_an_error_ends_the_run_failed_with_the_error_as_a_tag(prepared, tiny_params, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(epoch_module, "train_one_epoch", broken)
    with pytest.raises(RuntimeError):
        _train(prepared, tiny_params)
    run = _run(prepared)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: the disk is full"


def test_an_interrupted_run_ends_killed_and_resuming_continues_it_with_the_gap_marked(
    prepared, tiny_params, monkeypatch
):
    real_epoch = epoch_module.train_one_epoch
    calls = []

    def interrupted_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(epoch_module, "train_one_epoch", interrupted_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        _train(prepared, tiny_params)
    first = _run(prepared)
    assert first.info.status == "KILLED" and first.data.tags["error"].startswith("KeyboardInterrupt")
    assert first.data.tags["last_epoch"] == "1", "the last epoch it reached"

    monkeypatch.setattr(epoch_module, "train_one_epoch", real_epoch)
    _train(prepared, tiny_params)
    resumed = _run(prepared)
    assert resumed.info.run_id == first.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed_at_epoch"] == "1"
    gap = mlflow.MlflowClient().get_metric_history(resumed.info.run_id, "resumed_at_epoch")
    assert [(m.step, m.value) for m in gap] == [(1, 1.0)]
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(resumed.info.run_id, "train_loss")] == [1, 2]
