import json
import math

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.config import EvaluateConfig
from pipeline.data.preprocess import preprocess
from pipeline.data.split import split
from pipeline.errors import ConfigError
from pipeline.evaluation.metrics import METRICS
from pipeline.stages.evaluate import evaluate
from pipeline.tracking.runs import start


@pytest.fixture
def prepared(hippocampus, tiny_params, tmp_path):
    prep = tmp_path / "prep"
    preprocess(hippocampus, prep, tiny_params.data, tiny_params.preprocess)
    split(prep / "manifest.csv", tmp_path / "split.json", tiny_params.split, tiny_params.seed)
    return prep, tmp_path / "split.json"


@pytest.mark.slow
def test_evaluate_writes_per_case_summary_report_and_logs_them(prepared, untrained_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with start("evaluate-test") as run:
        run_id = run.info.run_id
    (tmp_path / "run.json").write_text(json.dumps({"experiment": "evaluate-test", "run_id": run_id}))
    prep, split_json = prepared
    config = EvaluateConfig(nsd_tolerance_mm=[1.0, 2.0])
    summary = evaluate(untrained_model, prep, split_json, tmp_path / "reports", tmp_path / "run.json", config)

    per_case = pd.read_csv(tmp_path / "reports" / "per_case.csv", keep_default_na=False)
    validation = json.loads(split_json.read_text())["validation"]
    assert sorted(per_case.case_id) == sorted(validation)
    scores = [f"{m}_{c}" for m in METRICS for c in ("Anterior", "Posterior", "mean")]
    assert list(per_case.columns) == ["case_id", *scores, "pixel_error", "absent_Anterior", "absent_Posterior"]
    assert per_case.pixel_error.between(0, 1).all()
    for metric, (_, higher_is_better) in METRICS.items():
        values = per_case[[f"{metric}_Anterior", f"{metric}_Posterior"]].to_numpy()
        assert not np.isnan(values).any()
        assert (values >= 0).all(), metric
        assert not higher_is_better or (values <= 1).all(), metric
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == summary
    assert {"n_cases", "dice_mean", "dice_Anterior", "dice_Posterior", "pixel_error"} <= set(summary)
    assert math.isclose(summary["dice_mean"], per_case.dice_mean.mean())
    assert math.isclose(summary["median"]["hd95_mm_Anterior"], per_case.hd95_mm_Anterior.median())
    html = (tmp_path / "reports" / "report.html").read_text()
    assert "Posterior 2 mm" in html and html.count("data:image/png;base64,") == 2

    logged = mlflow.get_run(run_id)
    assert {"eval_dice_mean", "eval_dice_Anterior", "eval_hd95_mm_Posterior_median", "eval_nsd_mean_std"} <= set(
        logged.data.metrics
    )
    assert "eval_empty_Anterior_absent_from_both" in logged.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
    assert artifacts == {
        f"evaluation/{name}" for name in ("per_case.csv", "metrics.json", "report.html", "boxplots.png", "cases.png")
    }


def test_a_tolerance_per_class_must_match_the_classes(prepared, untrained_model, tmp_path):
    prep, split_json = prepared
    with pytest.raises(ConfigError, match="3 tolerances for 2 classes"):
        evaluate(untrained_model, prep, split_json, tmp_path / "r", config=EvaluateConfig(nsd_tolerance_mm=[1, 2, 3]))
