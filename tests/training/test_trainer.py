import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import psutil
import pytest
import torch

import pipeline.training.trainer as training
from pipeline.data.preprocess import preprocess
from pipeline.data.split import split
from pipeline.errors import TrainingError
from pipeline.networks.model import load_model
from pipeline.params import params_yaml
from pipeline.stages.train import train as train_stage
from pipeline.training.checkpoint import CheckpointError


@pytest.fixture
def prepared(hippocampus, tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    preprocess(hippocampus, tmp_path / "prep", tiny_params.data, tiny_params.preprocess)
    split(tmp_path / "prep" / "manifest.csv", tmp_path / "split.json", tiny_params.split, tiny_params.seed)
    return tmp_path


def _train(root, params, name):
    return train_stage(root / "prep", root / "split.json", root / name, params)


def _history(models):
    """The history without its timings, which no two runs share."""
    return pd.read_csv(models / "history.csv").drop(columns=training.TIMING_COLUMNS)


def _weights(path):
    return load_model(path)[0].state_dict()


def test_training_writes_a_model_history_and_an_mlflow_run(prepared, tiny_params):
    _train(prepared, tiny_params, "models")
    models = prepared / "models"
    history = pd.read_csv(models / "history.csv")
    assert list(history.epoch) == [1, 2] and history.val_dice_mean.between(0, 1).all()
    assert not (models / "checkpoint.pt").exists(), "a finished run must leave no checkpoint to resume from"
    _, description = load_model(models / "model.pt")
    assert description.labels["1"] == "Anterior"
    assert description.provenance["params"]["train"]["epochs"] == 2
    run = mlflow.get_run(json.loads((models / "mlflow_run.json").read_text())["run_id"])
    assert run.data.params["train.epochs"] == "2"
    assert {"train_loss", "val_dice_mean", "val_dice_Anterior"} <= set(run.data.metrics)
    history_of_loss = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history_of_loss] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize(
    "speed",
    [{"amp": True}, {"amp": False}, {"compile": True}],
    ids=["bfloat16-where-supported", "float32", "compiled"],
)
def test_the_same_params_and_seed_give_the_same_model_with_any_number_of_data_threads(prepared, tiny_params, speed):
    _train(prepared, _with(tiny_params, data_workers=0, **speed), "first")
    _train(prepared, _with(tiny_params, data_workers=2, **speed), "second")
    first, second = _weights(prepared / "first" / "model.pt"), _weights(prepared / "second" / "model.pt")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert _history(prepared / "first").equals(_history(prepared / "second"))


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


def test_checkpoints_follow_the_first_epoch_then_a_minute_apart_and_the_last(prepared, tiny_params, monkeypatch):
    """Half-second epochs spent a quarter of their time writing a checkpoint after each."""
    saved = []
    real_save = training.save_checkpoint
    monkeypatch.setattr(training, "save_checkpoint", lambda path, state: (saved.append(state), real_save(path, state)))
    _train(prepared, _with(tiny_params, epochs=4), "models")
    assert [state["progress"]["epoch"] for state in saved] == [1, 4]
    assert list(pd.read_csv(prepared / "models" / "history.csv").epoch) == [1, 2, 3, 4]
    saved.clear()
    monkeypatch.setattr(training, "CHECKPOINT_SECONDS", 0.0)
    _train(prepared, _with(tiny_params, epochs=4), "every")
    assert [state["progress"]["epoch"] for state in saved] == [1, 2, 3, 4]


def test_a_checkpoint_from_other_params_is_refused_not_silently_restarted(prepared, tiny_params, monkeypatch):
    monkeypatch.setattr(training, "save_checkpoint", lambda path, state: (torch.save(state, path), exit(1)))
    with pytest.raises(SystemExit):
        _train(prepared, tiny_params, "models")
    monkeypatch.undo()
    changed = tiny_params.model_copy(update={"seed": 99})
    with pytest.raises(CheckpointError, match="other parameters, data or number of processes; delete it"):
        _train(prepared, changed, "models")
    (prepared / "models" / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="cannot be read"):
        _train(prepared, tiny_params, "models")


@pytest.mark.parametrize(
    "options",
    [
        {
            "network": "dynunet",
            "deep_supervision": True,
            "loss": "dice_focal",
            "optimizer": "sgd",
            "schedule": "poly",
            "warmup_epochs": 1,
        },
        {
            "network": "basicunet",
            "channels": [4, 4, 8, 8, 8],
            "patch_size": [32, 48, 32],
            "loss": "tversky",
            "optimizer": "adam",
            "schedule": "step",
        },
        {
            "loss": "weighted_ce",
            "loss_options": {"class_weights": [0.1, 1.0, 1.0]},
            "augmentation": {"elastic_prob": 1.0, "affine_prob": 1.0, "smooth_prob": 1.0, "bias_field_prob": 1.0},
            "data_workers": 1,
        },
        {"loss": "dice_ce", "loss_options": {"ce_weight": 1.0, "ce_weight_end": 0.0}},
    ],
    ids=["dynunet-deep-supervision", "basicunet", "weighted-ce-heavy-augmentation-worker", "ce-weight-schedule"],
)
def test_network_loss_and_schedule_options_train(prepared, tiny_params, options):
    params = _with(tiny_params, epochs=2, **options)
    final = _train(prepared, params, "models")
    assert 0 <= final["val_dice_mean"] <= 1
    network, description = load_model(prepared / "models" / "model.pt")
    assert description.network.name == (params.train.network if params.train.network != "auto" else "unet")
    if params.train.loss_options.ce_weight_end is not None:
        assert list(_history(prepared / "models").ce_weight) == [1.0, 0.0]


def _with(params, **train):
    return type(params).model_validate({**params.model_dump(), "train": {**params.train.model_dump(), **train}})


def test_early_stopping_keeps_the_best_validated_weights(prepared, tiny_params):
    params = _with(tiny_params, epochs=6, val_every=1, learning_rate=0.0, early_stopping_patience=1, keep="best")
    _train(prepared, params, "models")  # no learning: the second validation is no better than the first
    history = pd.read_csv(prepared / "models" / "history.csv")
    assert list(history.epoch) == [1, 2]
    provenance = load_model(prepared / "models" / "model.pt")[1].provenance
    assert (
        provenance["kept"] == "best (epoch 1)" and "no better validation Dice in 1 validations" in provenance["stopped"]
    )


def test_a_time_budget_ends_training_with_a_validation(prepared, tiny_params):
    _train(prepared, _with(tiny_params, epochs=50, val_every=10, max_minutes=1e-6), "models")
    history = pd.read_csv(prepared / "models" / "history.csv")
    assert list(history.epoch) == [1] and not pd.isna(history.val_dice_mean[0])
    assert "time budget" in load_model(prepared / "models" / "model.pt")[1].provenance["stopped"]


LAUNCHERS = {
    "one-process": [sys.executable, "-m", "pipeline"],
    "torchrun-2-processes": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    + ["-m", "pipeline"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS.values(), ids=LAUNCHERS.keys())
def test_sigkill_mid_training_then_the_same_command_reaches_the_same_model(prepared, tiny_params, launcher):
    params = _with(tiny_params, epochs=5, val_every=1)
    (prepared / "params.yaml").write_text(params_yaml(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{prepared / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}

    def command(out):
        return [*launcher, "train", "prep", "split.json", out, "-p", "params.yaml"]

    subprocess.run(command("whole"), cwd=prepared, env=env, check=True, capture_output=True)
    victim = subprocess.Popen(
        command("killed"),
        cwd=prepared,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint = prepared / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert victim.poll() is None, "training ended before it could be killed"
    # every process of the run (torchrun's workers have process groups of their own), as a power cut would
    for process in [*psutil.Process(victim.pid).children(recursive=True), psutil.Process(victim.pid)]:
        process.send_signal(signal.SIGKILL)
    victim.wait()
    epochs_done = torch.load(checkpoint, weights_only=True)["progress"]["epoch"]
    assert 1 <= epochs_done < 5
    resumed = subprocess.run(command("killed"), cwd=prepared, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from killed/checkpoint.pt after epoch {epochs_done}" in resumed.stderr
    expected, got = _weights(prepared / "whole" / "model.pt"), _weights(prepared / "killed" / "model.pt")
    assert all(torch.allclose(expected[k], got[k]) for k in expected)
    assert _history(prepared / "whole").equals(_history(prepared / "killed"))


@pytest.mark.slow
def test_torchrun_trains_with_two_cpu_processes_and_one_writer(prepared, tiny_params):
    params = _with(tiny_params, epochs=2, val_every=1)
    (prepared / "params.yaml").write_text(params_yaml(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{prepared / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "pipeline", "train", "prep", "split.json", "models", "-p", "params.yaml"]
    result = subprocess.run(command, cwd=prepared, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(_history(prepared / "models").epoch) == [1, 2]
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("medseg").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["processes"] == "2", "rank 0 alone logs"
    assert result.stdout.count("final epoch") == 2  # each process reports; only rank 0 wrote files
    assert sorted(p.name for p in (prepared / "models").iterdir()) == ["history.csv", "mlflow_run.json", "model.pt"]


def test_a_nan_loss_on_real_data_stops_the_run_keeps_the_last_good_checkpoint_and_writes_no_model(
    prepared, tiny_params
):
    """An absurd learning rate from the second epoch on (a step schedule multiplying it by 1e12) on the real
    fixture cases: the run stops at the step where the loss or a gradient goes non-finite, naming the epoch
    and the cases, keeps the last checkpoint before it, writes no model and ends FAILED in MLflow."""
    absurd = _with(tiny_params, epochs=4, schedule="step", step_epochs=1, step_gamma=1e12)
    with pytest.raises(TrainingError) as stopped:
        _train(prepared, absurd, "models")
    message = str(stopped.value)
    assert "training stopped at epoch" in message and "cases hippocampus_" in message
    assert "train.learning_rate" in message and "train.amp=false" in message
    epoch = int(message.split("training stopped at epoch ")[1].split(",")[0])
    assert epoch >= 2
    models = prepared / "models"
    assert not (models / "model.pt").exists()
    checkpoint = torch.load(models / "checkpoint.pt", weights_only=True)
    assert 1 <= checkpoint["progress"]["epoch"] < epoch
    assert f"the last good state, after epoch {checkpoint['progress']['epoch']}, is kept" in message
    assert all(torch.isfinite(w).all() for w in checkpoint["network"].values() if w.is_floating_point())
    run = mlflow.get_run(json.loads((models / "mlflow_run.json").read_text())["run_id"])
    assert run.info.status == "FAILED" and "training stopped at epoch" in run.data.tags["error"]


def test_skipping_non_finite_steps_still_stops_when_nothing_trains(prepared, tiny_params):
    absurd = _with(tiny_params, epochs=4, schedule="step", step_epochs=1, step_gamma=1e12, nonfinite="skip")
    with pytest.raises(TrainingError, match="every one of the epoch's"):
        _train(prepared, absurd, "models")
    assert not (prepared / "models" / "model.pt").exists()


@pytest.mark.slow
def test_without_an_epoch_count_the_probe_fits_the_epochs_to_the_budget_and_the_pace_refits_them(prepared, tiny_params):
    budgeted = _with(tiny_params, epochs=None, val_every=None, amp="auto", budget_minutes=0.3)
    _train(prepared, budgeted, "models")
    _, description = load_model(prepared / "models" / "model.pt")
    step_plan = description.step_plan
    history = pd.read_csv(prepared / "models" / "history.csv")
    assert len(history) == step_plan["epochs"] >= 1
    assert history.lr.iloc[-1] == pytest.approx(0, abs=1e-9), "the cosine schedule ran to its end"
    assert "budget" in step_plan["reasons"]["epochs"] and step_plan["reasons"]["precision"]
    assert "re-fitted after epoch" in step_plan["reasons"]["epochs"], "the epochs were fitted again to the pace kept"
    if "planned_epochs" in history:  # the count changed
        assert history.planned_epochs.dropna().iloc[-1] == step_plan["epochs"]
    assert description.configuration["patch_size"] == [32, 48, 32]
