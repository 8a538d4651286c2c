"""Stage 5: segment the validation cases from their raw files, as a user would, and score them."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from tqdm import tqdm

from pipeline import tracking
from pipeline.files import atomic_path, write_csv, write_json
from pipeline.inference import predict_file
from pipeline.model import load_model

PER_CASE_FILE, METRICS_FILE, PLOT_FILE = "per_case.csv", "metrics.json", "dice_per_class.png"


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, n_classes: int) -> list[float]:
    """Dice of each foreground class; NaN where the class is absent from both."""
    as_one_hot = lambda a: one_hot(torch.from_numpy(a.astype(np.int64))[None, None], n_classes)  # noqa: E731
    return compute_dice(as_one_hot(prediction), as_one_hot(truth), include_background=False, ignore_empty=False)[0].tolist()


def _plot(per_case: pd.DataFrame, classes: list[str], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(1.6 + 1.4 * len(classes), 4))
    values = [per_case[f"dice_{c}"].dropna() for c in classes]
    axis.boxplot(values, showmeans=True)
    for i, v in enumerate(values, start=1):
        axis.scatter(np.full(len(v), i) + np.random.default_rng(i).uniform(-0.12, 0.12, len(v)), v, s=8, alpha=0.5)
    axis.set_xticks(range(1, len(classes) + 1), classes)
    axis.set_ylabel("Dice")
    axis.set_ylim(0, 1)
    axis.set_title(f"Validation Dice per class ({len(per_case)} cases)")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)


def evaluate(model_path: Path, prep_dir: Path, split_json: Path, out_dir: Path, run_file: Path | None = None) -> dict:
    out_dir = Path(out_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, description = load_model(model_path, device)
    labels = {int(k): v for k, v in description["labels"].items()}
    classes = [labels[k] for k in sorted(labels) if k != 0]
    manifest = pd.read_csv(Path(prep_dir) / "manifest.csv", dtype={"case_id": str}).set_index("case_id")
    raw_dir = Path(json.loads((Path(prep_dir) / "dataset.json").read_text())["raw_dir"])
    validation = json.loads(Path(split_json).read_text())["validation"]

    rows = []
    for case_id in tqdm(validation, desc="evaluating", unit="case"):
        prediction = predict_file(network, description, raw_dir / manifest.at[case_id, "raw_image"], device)
        truth = np.rint(np.asanyarray(nib.load(raw_dir / manifest.at[case_id, "raw_label"]).dataobj)).astype(np.uint8)
        scores = dice_per_class(prediction, truth, len(labels))
        rows.append({"case_id": case_id, **{f"dice_{c}": s for c, s in zip(classes, scores)}})
    per_case = pd.DataFrame(rows)
    per_case["dice_mean"] = per_case[[f"dice_{c}" for c in classes]].mean(axis=1)
    summary = {
        "n_cases": len(per_case),
        "dice_mean": float(per_case["dice_mean"].mean()),
        **{f"dice_{c}": float(per_case[f"dice_{c}"].mean()) for c in classes},
    }
    write_csv(out_dir / PER_CASE_FILE, per_case)
    write_json(out_dir / METRICS_FILE, summary)
    _plot(per_case, classes, out_dir / PLOT_FILE)

    if run_file and Path(run_file).is_file():
        run = json.loads(Path(run_file).read_text())
        with tracking.start(run["experiment"], run_id=run["run_id"]):
            mlflow.log_metrics({f"eval_{k}": v for k, v in summary.items() if k != "n_cases"})
            for name in (PER_CASE_FILE, METRICS_FILE, PLOT_FILE):
                mlflow.log_artifact(str(out_dir / name), artifact_path="evaluation")
    return summary
