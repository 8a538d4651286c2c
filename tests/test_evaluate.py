import json
import math

import numpy as np
import pandas as pd

from pipeline.evaluate import dice_per_class, evaluate
from pipeline.preprocess import preprocess
from pipeline.split import split


def test_dice_per_class_on_known_overlaps():
    truth = np.zeros((4, 4, 4), np.uint8)
    truth[:2] = 1
    truth[3] = 2
    prediction = truth.copy()
    prediction[1] = 0  # half of class 1 missed
    scores = dice_per_class(prediction, truth, n_classes=3)
    assert math.isclose(scores[0], 2 * 16 / (16 + 32), rel_tol=1e-6)
    assert scores[1] == 1.0


def test_evaluate_writes_per_case_summary_and_plot(hippocampus, tiny_params, untrained_model, tmp_path):
    prep = tmp_path / "prep"
    preprocess(hippocampus, prep, tiny_params.data, tiny_params.preprocess)
    split(prep / "manifest.csv", tmp_path / "split.json", tiny_params.split, tiny_params.seed)
    summary = evaluate(untrained_model, prep, tmp_path / "split.json", tmp_path / "reports")
    per_case = pd.read_csv(tmp_path / "reports" / "per_case.csv")
    validation = json.loads((tmp_path / "split.json").read_text())["validation"]
    assert sorted(per_case.case_id) == sorted(validation)
    assert list(per_case.columns) == ["case_id", "dice_Anterior", "dice_Posterior", "dice_mean", "pixel_error"]
    assert per_case.pixel_error.between(0, 1).all()
    assert per_case[["dice_Anterior", "dice_Posterior"]].apply(lambda c: c.between(0, 1)).all().all()
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == summary
    assert math.isclose(summary["dice_mean"], per_case.dice_mean.mean())
    for picture in ("dice_per_class.png", "cases.png"):
        assert (tmp_path / "reports" / picture).read_bytes()[:4] == b"\x89PNG"
