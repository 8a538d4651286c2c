"""Stage 5: segment the validation cases from their raw files, as a user would, and score them."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from tqdm import tqdm

from pipeline import tracking
from pipeline.dataset import class_indices
from pipeline.figures import case_gallery, dice_boxplot
from pipeline.files import write_csv, write_json
from pipeline.inference import predict
from pipeline.model import load_model
from pipeline.volumes import read_image, to_metatensor

PER_CASE_FILE, METRICS_FILE, PLOT_FILE, GALLERY_FILE = "per_case.csv", "metrics.json", "dice_per_class.png", "cases.png"


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, n_classes: int) -> list[float]:
    """Dice of each foreground class; 1 where the class is absent from both, 0 where only one has it."""

    def as_one_hot(labels: np.ndarray) -> torch.Tensor:
        return one_hot(torch.from_numpy(labels.astype(np.int64))[None, None], n_classes)

    return compute_dice(as_one_hot(prediction), as_one_hot(truth), include_background=False, ignore_empty=False)[
        0
    ].tolist()


def _load_array(path: Path) -> np.ndarray:
    """Indexed (x, y, z), as the predictions are."""
    return sitk.GetArrayFromImage(read_image(path)).T


def evaluate(model_path: Path, prep_dir: Path, split_json: Path, out_dir: Path, run_file: Path | None = None) -> dict:
    out_dir = Path(out_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, description = load_model(model_path, device)
    labels = {int(k): v for k, v in description["labels"].items()}
    classes = [labels[k] for k in sorted(labels) if k != 0]
    manifest = pd.read_csv(Path(prep_dir) / "manifest.csv", dtype={"case_id": str}).set_index("case_id")
    raw_dir = Path(json.loads((Path(prep_dir) / "dataset.json").read_text())["raw_dir"])
    validation = json.loads(Path(split_json).read_text())["validation"]

    def image_truth_prediction(case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image_path = raw_dir / manifest.at[case_id, "raw_image"]
        values = np.rint(_load_array(raw_dir / manifest.at[case_id, "raw_label"])).astype(np.int64)
        truth = class_indices(description["label_values"])[values]
        image = to_metatensor(read_image(image_path))
        return image[0].numpy(), truth, predict(network, description, image, device)

    rows = []
    for case_id in tqdm(validation, desc="evaluating", unit="case"):
        _, truth, prediction = image_truth_prediction(case_id)
        scores = dice_per_class(prediction, truth, len(labels))
        rows.append(
            {
                "case_id": case_id,
                **{f"dice_{c}": s for c, s in zip(classes, scores)},
                "pixel_error": float((prediction != truth).mean()),
            }
        )
    per_case = pd.DataFrame(rows)
    per_case.insert(len(classes) + 1, "dice_mean", per_case[[f"dice_{c}" for c in classes]].mean(axis=1))
    summary = {
        "n_cases": len(per_case),
        "dice_mean": float(per_case["dice_mean"].mean()),
        **{f"dice_{c}": float(per_case[f"dice_{c}"].mean()) for c in classes},
        "pixel_error": float(per_case["pixel_error"].mean()),
    }
    write_csv(out_dir / PER_CASE_FILE, per_case)
    write_json(out_dir / METRICS_FILE, summary)
    dice_boxplot(per_case, classes, out_dir / PLOT_FILE)
    ranked = per_case.sort_values("dice_mean", ascending=False).reset_index(drop=True)
    shown = {"best": ranked.iloc[0], "median": ranked.iloc[len(ranked) // 2], "worst": ranked.iloc[-1]}
    case_gallery(
        [
            (f"{kind} {row.case_id} (Dice {row.dice_mean:.3f})", *image_truth_prediction(row.case_id))
            for kind, row in shown.items()
        ],
        out_dir / GALLERY_FILE,
    )

    if run_file and Path(run_file).is_file():
        run = json.loads(Path(run_file).read_text())
        with tracking.start(run["experiment"], run_id=run["run_id"]):
            mlflow.log_metrics({f"eval_{k}": v for k, v in summary.items() if k != "n_cases"})
            for name in (PER_CASE_FILE, METRICS_FILE, PLOT_FILE, GALLERY_FILE):
                mlflow.log_artifact(str(out_dir / name), artifact_path="evaluation")
    return summary
