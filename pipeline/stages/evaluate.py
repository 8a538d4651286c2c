"""``medseg evaluate``: the validation cases segmented and scored (``evaluation.evaluate``), the scores added to
the training's MLflow run, and the model registered with its comparison key."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.config import EvaluateConfig, MlflowConfig
from pipeline.errors import ModelError
from pipeline.evaluation import evaluate as evaluation
from pipeline.evaluation.scoring import OUTPUT_FILES
from pipeline.networks.description import ModelDescription
from pipeline.networks.model import load_model
from pipeline.provenance import comparison_key, key_parts
from pipeline.tracking.offline import PENDING_DIR, RunLog
from pipeline.tracking.registry import REGISTER_OP, register, registered_name, registering


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
    """With ``run_file``, the scores go to the training's MLflow run and, unless ``register_model`` is false
    (cross-validation's folds), the model to the registry (``tracking.registered_model``): one version per run and
    model file, this evaluation's score recorded on it with its comparison key (split, data, plan, TTA,
    post-processing). Nothing is registered where ``MEDSEG_NO_REGISTRY`` is set (``medseg reproduce``)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, description = load_model(model_path, device)  # once: scored, then registered
    summary = evaluation.evaluate(network, description, model_path, prep_dir, split_json, out_dir, config, tta)
    if not (run_file and Path(run_file).is_file()):
        return summary
    _check_not_empty(summary, model_path)
    logged = json.loads(Path(run_file).read_text())
    run = RunLog(Path(run_file).parent / PENDING_DIR, logged["experiment"], logged["run_id"])
    run.log_metrics(mlflow_metrics(summary))
    for name in OUTPUT_FILES:
        run.log_artifact(Path(out_dir) / name, artifact_path="evaluation")
    if register_model and registering():
        dataset = json.loads((Path(prep_dir) / "dataset.json").read_text())["name"]
        name = registered_name((tracking or MlflowConfig()).registered_model, dataset)
        key = comparison_key(split_json, description.preprocess, _postprocess(description), tta)
        register(run, network, Path(model_path), description.patch_size, name, summary["dice_mean"], key)
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
    network, description = load_model(model_file)
    run = RunLog(Path(files), op["experiment"], run_id)
    key = op.get("key") or _key_before_keys(op, description)
    register(run, network, model_file, op["patch_size"], op["name"], op["score"], key, op.get("evaluated_at"))


def _key_before_keys(op: dict, description: ModelDescription) -> dict[str, str]:
    """A registration kept by a medseg that recorded only the validation split's hash: the plan and post-processing
    come from the model itself; the data version and TTA were not recorded, and say so."""
    unknown = "unknown (evaluated before comparison keys were recorded)"
    return key_parts(op["split"], unknown, description.preprocess, _postprocess(description), unknown)


def _postprocess(description: ModelDescription) -> dict:
    return description.postprocess.model_dump() if description.postprocess else {}


DEFERRED = {REGISTER_OP: register_deferred}  # what `medseg runs sync` hands to sync()
