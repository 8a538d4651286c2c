"""Stage 5: segment the validation cases from their raw files, as a user would, and score them
with the code that ``medseg evaluate-folders`` uses (pipeline/evaluation/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from pipeline.config import EvaluateConfig
from pipeline.data.dataset import class_indices
from pipeline.data.volumes import read_image, to_metatensor
from pipeline.evaluation.metrics import LabelledCase
from pipeline.evaluation.scoring import evaluate_cases
from pipeline.inference.predictor import predict
from pipeline.networks.description import ModelDescription


def _load_array(path: Path) -> np.ndarray:
    """Indexed (x, y, z), as the predictions are."""
    return sitk.GetArrayFromImage(read_image(path)).T


def evaluate(
    network: torch.nn.Module,
    description: ModelDescription,
    model_path: Path,
    prep_dir: Path,
    split_json: Path,
    out_dir: Path,
    config: EvaluateConfig | None = None,
    tta: bool = False,
) -> dict:
    """The summary of the scores, with per-case scores and the report written to OUT_DIR. The model comes loaded
    (``model_path`` only names it in the report), as the evaluate stage goes on to register the same network.
    ``tta``: segment with mirroring test-time augmentation (params' ``inference.tta``)."""
    config = config or EvaluateConfig()
    out_dir = Path(out_dir)
    device = next(network.parameters()).device
    labels = {int(k): v for k, v in description.labels.items()}
    classes = {k: labels[k] for k in sorted(labels) if k != 0}  # class indices, as predictions hold them
    manifest = pd.read_csv(Path(prep_dir) / "manifest.csv", dtype={"case_id": str}).set_index("case_id")
    raw_dir = Path(json.loads((Path(prep_dir) / "dataset.json").read_text())["raw_dir"])
    validation = json.loads(Path(split_json).read_text())["validation"]

    def segmented(case_id: str) -> LabelledCase:
        raw_image = read_image(raw_dir / manifest.at[case_id, "raw_image"])
        values = np.rint(_load_array(raw_dir / manifest.at[case_id, "raw_label"])).astype(np.int64)
        image = to_metatensor(raw_image)
        return LabelledCase(
            case_id,
            prediction=predict(network, description, image, device, tta).labels,
            reference=class_indices(description.label_values)[values],
            spacing=tuple(raw_image.GetSpacing()),
            image=image[0].numpy(),
        )

    return evaluate_cases(
        validation,
        segmented,
        classes,
        config.nsd_tolerance_mm,
        out_dir,
        title="Evaluation on the validation cases",
        details={"model": str(model_path), "cases": f"the validation cases of {split_json}, segmented from raw files"},
    )
