"""Cross-validation on the real fixture cases: a parent run with one nested run per fold, the mean and std over
folds, no registry noise, and a second call that resumes instead of training again."""

import json
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.config import Params
from pipeline.data.preprocess import preprocess
from pipeline.data.split import split
from pipeline.params import params_yaml
from pipeline.stages.crossval import aggregate, cross_validate, fold_params

# trainings, MLflow stores or Ray workers: `make test` runs these, `make test-fast` leaves them out
pytestmark = pytest.mark.slow


def test_aggregate_is_mean_and_population_std_over_folds():
    per_fold = pd.DataFrame({"fold": [0, 1, 2], "eval_dice_mean": [0.8, 0.9, 0.85]})
    summary = aggregate(per_fold)
    assert summary["eval_dice_mean_mean"] == pytest.approx(0.85)
    assert summary["eval_dice_mean_std"] == pytest.approx(np.std([0.8, 0.9, 0.85]))
    assert "fold_mean" not in summary


def test_every_fold_splits_with_the_grouping_so_no_patient_is_trained_and_validated_on(tmp_path):
    """The split each fold's run makes (``_fold`` calls split with ``fold_params``), without the training."""
    cases = [f"PAT-{p:03d}_R_{k}" for p in range(20) for k in range(1 + p % 3)]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"case_id": cases}).to_csv(manifest, index=False)
    params = Params.model_validate({"split": {"n_folds": 4, "group": r"^(PAT-\d+)_"}})
    validation = []
    for fold in range(4):
        result = split(manifest, tmp_path / f"split_{fold}.json", fold_params(params, fold).split, params.seed)
        assert result["fold"] == fold and result["grouping"]["n_groups"] == 20
        validated, trained = ({c.split("_")[0] for c in result[k]} for k in ("validation", "train"))
        assert validated.isdisjoint(trained)
        validation.append(result["validation"])
    assert sorted(c for held_out in validation for c in held_out) == sorted(cases), "each case validated once"


@pytest.fixture
def crossvalidated(hippocampus, tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    preprocess(hippocampus, tmp_path / "prep", tiny_params.data, tiny_params.preprocess)
    summary = cross_validate(tmp_path / "prep", tmp_path / "cv", tiny_params)
    return tmp_path, tiny_params, summary


def test_every_fold_is_a_nested_run_under_one_parent_with_mean_and_std(crossvalidated):
    root, params, summary = crossvalidated
    client = mlflow.MlflowClient()
    parent_id = json.loads((root / "cv" / "mlflow_run.json").read_text())["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["split.fold"] == "all"
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(c.data.tags["mlflow.runName"] for c in children) == ["fold 0", "fold 1"]
    fold_dice = {}
    for child in children:
        fold = int(child.data.params["split.fold"])
        assert child.info.status == "FINISHED"
        assert child.data.metrics["eval_dice_mean"] == pytest.approx(
            json.loads((root / "cv" / f"fold_{fold}" / "reports" / "metrics.json").read_text())["dice_mean"]
        )
        fold_dice[fold] = child.data.metrics["eval_dice_mean"]
    # the two folds hold out disjoint cases that together are all of them
    validation = [set(json.loads((root / "cv" / f"fold_{k}" / "split.json").read_text())["validation"]) for k in (0, 1)]
    assert not validation[0] & validation[1] and len(validation[0] | validation[1]) == 6
    dice = [fold_dice[0], fold_dice[1]]
    assert summary["eval_dice_mean_mean"] == pytest.approx(np.mean(dice))
    assert summary["eval_dice_mean_std"] == pytest.approx(np.std(dice))
    assert parent.data.metrics["eval_dice_mean_mean"] == pytest.approx(np.mean(dice))
    assert parent.data.metrics["eval_dice_mean_std"] == pytest.approx(np.std(dice))
    assert [m.value for m in client.get_metric_history(parent_id, "fold_eval_dice_mean")] == pytest.approx(dice)
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"folds.csv", "crossval.json"}
    assert pd.read_csv(root / "cv" / "folds.csv")["fold"].tolist() == [0, 1]
    assert client.search_registered_models() == [], "fold models are not registered"


def test_a_second_call_resumes_the_same_parent_and_trains_nothing_again(crossvalidated):
    root, params, summary = crossvalidated
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs_before = len(client.search_runs(experiments))
    model_bytes = (root / "cv" / "fold_1" / "models" / "model.pt").read_bytes()
    # fold 1 died after training but before its evaluation
    (root / "cv" / "fold_1" / "reports" / "metrics.json").unlink()
    again = cross_validate(root / "prep", root / "cv", params)
    assert again == pytest.approx(summary)
    assert (root / "cv" / "fold_1" / "models" / "model.pt").read_bytes() == model_bytes
    assert len(client.search_runs(experiments)) == runs_before, "no new run"


def test_a_folder_that_was_not_preprocessed_is_an_error_naming_it(tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(params_yaml(tiny_params))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "crossval", "nowhere", "cv"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "error: nowhere: no manifest.csv here; preprocess first" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "cv").exists()
