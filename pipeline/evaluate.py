"""Stage 5: segment the validation cases from their raw files, as a user would, and score them
with the code that ``medseg evaluate-folders`` uses (pipeline/evaluation/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from pipeline.config import EvaluateConfig, MlflowConfig
from pipeline.dataset import class_indices
from pipeline.errors import ModelError
from pipeline.evaluation.metrics import LabelledCase
from pipeline.evaluation.scoring import OUTPUT_FILES, evaluate_cases
from pipeline.inference import predict
from pipeline.model import load_model
from pipeline.tracking.offline import PENDING_DIR, RunLog
from pipeline.tracking.provenance import comparison_key
from pipeline.tracking.registry import REGISTER_OP, register, registered_name, registering
from pipeline.volumes import read_image, to_metatensor


def _load_array(path: Path) -> np.ndarray:
    """Indexed (x, y, z), as the predictions are."""
    return sitk.GetArrayFromImage(read_image(path)).T


def mlflow_metrics(summary: dict) -> dict[str, float]:
    """The summary as MLflow's flat metric names: ``eval_dice_mean``, ``eval_hd95_mm_Anterior_median``, ..."""
    metrics = {f"eval_{k}": v for k, v in summary.items() if isinstance(v, float)}
    for statistic in ("median", "std"):
        metrics.update({f"eval_{k}_{statistic}": v for k, v in summary[statistic].items()})
    for name, counts in summary["empty_cases"].items():
        metrics.update({f"eval_empty_{name}_absent_from_{kind}": float(n) for kind, n in counts.items()})
    return metrics


def evaluate(
    model_path: Path,
    prep_dir: Path,
    split_json: Path,
    out_dir: Path,
    run_file: Path | None = None,
    config: EvaluateConfig | None = None,
    tta: bool = False,
    tracking: MlflowConfig | None = None,
    register_model: bool = True,
) -> dict:
    """``tta``: segment with mirroring test-time augmentation (params' ``inference.tta``). With ``run_file``, the
    scores go to the training's MLflow run and, unless ``register_model`` is false (cross-validation's folds), the
    model to the registry (``tracking.registered_model``): one version per run and model file, this evaluation's
    score recorded on it with its comparison key (split, data, plan, TTA, post-processing). Nothing is registered
    where ``MEDSEG_NO_REGISTRY`` is set (``medseg reproduce``)."""
    config = config or EvaluateConfig()
    out_dir = Path(out_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, description = load_model(model_path, device)
    labels = {int(k): v for k, v in description["labels"].items()}
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
            prediction=predict(network, description, image, device, tta),
            reference=class_indices(description["label_values"])[values],
            spacing=tuple(raw_image.GetSpacing()),
            image=image[0].numpy(),
        )

    summary = evaluate_cases(
        validation,
        segmented,
        classes,
        config.nsd_tolerance_mm,
        out_dir,
        title="Evaluation on the validation cases",
        details={"model": str(model_path), "cases": f"the validation cases of {split_json}, segmented from raw files"},
    )

    if run_file and Path(run_file).is_file():
        _check_not_empty(summary, model_path)
        logged = json.loads(Path(run_file).read_text())
        run = RunLog(Path(run_file).parent / PENDING_DIR, logged["experiment"], logged["run_id"])
        run.log_metrics(mlflow_metrics(summary))
        for name in OUTPUT_FILES:
            run.log_artifact(out_dir / name, artifact_path="evaluation")
        if not (register_model and registering()):
            return summary
        dataset = json.loads((Path(prep_dir) / "dataset.json").read_text())["name"]
        name = registered_name((tracking or MlflowConfig()).registered_model, dataset)
        key = comparison_key(split_json, description, tta)
        register(run, network, Path(model_path), description["patch_size"], name, summary["dice_mean"], key)
    return summary


def _check_not_empty(summary: dict, model_path: Path) -> None:
    """A model that predicts no foreground in any case is broken, whatever its scores say: its run is not
    scored and it is never registered (evaluating a model file alone, without its run, only reports)."""
    empty = [counts["prediction"] + counts["both"] for counts in summary["empty_cases"].values()]
    if summary["n_cases"] and all(n == summary["n_cases"] for n in empty):
        raise ModelError(
            f"{model_path}: predicted no foreground in any of the {summary['n_cases']} validation cases; the "
            "model is not registered (the report is written, see its figures)"
        )


def register_deferred(run_id: str, op: dict, files: Path) -> None:
    """Carry out, during ``medseg runs sync``, the registration an evaluation kept while the server was away. Should
    the server go away again meanwhile, ``register`` keeps it once more, in the run's own pending file."""
    model_file = Path(files) / op["files"][0]
    network, _ = load_model(model_file)
    run = RunLog(Path(files), op["experiment"], run_id)
    register(run, network, model_file, op["patch_size"], op["name"], op["score"], op["key"], op["evaluated_at"])


DEFERRED = {REGISTER_OP: register_deferred}  # what `medseg runs sync` hands to sync()
