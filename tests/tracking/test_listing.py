"""`medseg runs` and `medseg runs compare` on runs in a real MLflow store."""

import mlflow
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.tracking.listing import compare, runs_table
from pipeline.tracking.offline import RunLog


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    ids = []
    for epochs, dice, dirty in ((2, 0.5, "false"), (4, 0.7, "true")):
        run = RunLog(tmp_path / "pending", "listing")
        run.log_params({"train.epochs": epochs, "train.loss": "dice_ce", "env.python": f"3.{epochs}"})
        run.set_tags({"mlflow.source.git.commit": "ab" * 20, "git.dirty": dirty, "dvc.raw_data_md5": "cd" * 16})
        for step in (1, 2):
            run.log_metrics({"val_dice_Anterior": dice - 0.1 * (2 - step), "train_loss": 1.0 / step}, step=step)
        run.log_metrics({"eval_dice_Anterior": dice, "eval_dice_mean": dice, "eval_dice_mean_std": 0.1})
        run.end()
        ids.append(run.run_id)
    client = mlflow.MlflowClient()
    client.create_registered_model("medseg-listing")
    version = client.create_model_version("medseg-listing", f"runs:/{ids[1]}/model", run_id=ids[1])
    client.set_registered_model_alias("medseg-listing", "champion", version.version)
    return ids


def test_the_table_lists_runs_newest_first_with_differing_params_dice_and_alias(store):
    table = runs_table("listing")
    assert list(table.id) == [store[1][:8], store[0][:8]]
    assert list(table.status) == ["FINISHED", "FINISHED"]
    assert list(table.commit) == ["abababab*", "abababab"] and list(table["raw data"]) == ["cdcdcdcd"] * 2
    assert "train.epochs" in table and "train.loss" not in table and "env.python" not in table
    assert list(table["val_dice_Anterior"]) == [0.7, 0.5] and list(table["eval_dice_mean"]) == [0.7, 0.5]
    assert "eval_dice_mean_std" not in table
    assert list(table.alias) == ["medseg-listing@champion", ""]


def test_compare_shows_only_differing_params_and_metric_deltas(store):
    params, metrics = compare([store[0][:8], store[1]])
    assert set(params.index) == {"train.epochs", "env.python"}
    assert list(params.loc["train.epochs"]) == ["2", "4"]
    delta = metrics.loc["eval_dice_mean"].iloc[-1]
    assert metrics.columns[-1] == f"{store[1][:8]} - {store[0][:8]}" and delta == pytest.approx(0.2)


def test_the_commands_print_the_tables_and_an_unknown_run_is_named(store):
    runner = CliRunner()
    listed = runner.invoke(app, ["runs", "--experiment", "listing"])
    assert listed.exit_code == 0 and store[1][:8] in listed.output and "medseg-listing@champion" in listed.output
    compared = runner.invoke(app, ["runs", "compare", store[0], store[1]])
    assert compared.exit_code == 0 and "train.epochs" in compared.output and "eval_dice_mean" in compared.output
    unknown = runner.invoke(app, ["runs", "compare", store[0], "ffffffff"])
    assert "run ffffffff: no run with that id" in str(unknown.exception)
