import json

import mlflow
import pandas as pd
import pytest
import torch

import pipeline.train as training
from pipeline.checkpoint import CheckpointError
from pipeline.model import load_model
from pipeline.preprocess import preprocess
from pipeline.split import split


@pytest.fixture
def prepared(hippocampus, tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    preprocess(hippocampus, tmp_path / "prep", tiny_params.data, tiny_params.preprocess)
    split(tmp_path / "prep" / "manifest.csv", tmp_path / "split.json", tiny_params.split, tiny_params.seed)
    return tmp_path


def _train(root, params, name):
    return training.train(root / "prep", root / "split.json", root / name, params)


def _weights(path):
    return load_model(path)[0].state_dict()


def test_training_writes_a_model_history_and_an_mlflow_run(prepared, tiny_params):
    _train(prepared, tiny_params, "models")
    models = prepared / "models"
    history = pd.read_csv(models / "history.csv")
    assert list(history.epoch) == [1, 2] and history.val_dice_mean.between(0, 1).all()
    assert not (models / "checkpoint.pt").exists(), "a finished run must leave no checkpoint to resume from"
    _, description = load_model(models / "model.pt")
    assert description["labels"]["1"] == "Anterior"
    assert description["provenance"]["params"]["train"]["epochs"] == 2
    run = mlflow.get_run(json.loads((models / "mlflow_run.json").read_text())["run_id"])
    assert run.data.params["train.epochs"] == "2"
    assert {"train_loss", "val_dice_mean", "val_dice_Anterior"} <= set(run.data.metrics)
    history_of_loss = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history_of_loss] == [1, 2]


def test_the_same_params_and_seed_give_the_same_model(prepared, tiny_params):
    _train(prepared, tiny_params, "first")
    _train(prepared, tiny_params, "second")
    first, second = _weights(prepared / "first" / "model.pt"), _weights(prepared / "second" / "model.pt")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert pd.read_csv(prepared / "first" / "history.csv").equals(pd.read_csv(prepared / "second" / "history.csv"))


def test_a_run_killed_after_an_epoch_resumes_to_the_same_result(prepared, tiny_params, monkeypatch):
    _train(prepared, tiny_params, "uninterrupted")

    real_save = training.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(prepared, tiny_params, "resumed")
    first_run = json.loads((prepared / "resumed" / "mlflow_run.json").read_text())["run_id"]
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    _train(prepared, tiny_params, "resumed")

    expected, resumed = _weights(prepared / "uninterrupted" / "model.pt"), _weights(prepared / "resumed" / "model.pt")
    assert all(torch.allclose(expected[k], resumed[k]) for k in expected)
    assert json.loads((prepared / "resumed" / "mlflow_run.json").read_text())["run_id"] == first_run
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(first_run, "train_loss")] == [1, 2]


def test_a_checkpoint_from_other_params_is_refused_not_silently_restarted(prepared, tiny_params, monkeypatch):
    monkeypatch.setattr(training, "save_checkpoint", lambda path, state: (torch.save(state, path), exit(1)))
    with pytest.raises(SystemExit):
        _train(prepared, tiny_params, "models")
    monkeypatch.undo()
    changed = tiny_params.model_copy(update={"seed": 99})
    with pytest.raises(CheckpointError, match="other parameters or code; delete it"):
        _train(prepared, changed, "models")
    (prepared / "models" / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="cannot be read"):
        _train(prepared, tiny_params, "models")
