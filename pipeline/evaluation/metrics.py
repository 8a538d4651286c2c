"""Overlap and surface-distance scores of one label map against its reference, with MONAI's metric functions.

Empty-case rule (README, "Metrics"): a class absent from both the reference and the prediction is a correct
"absent" and scores perfectly (overlap scores and surface Dice 1, distances 0); a class present in only one of
them scores worst (overlap scores and surface Dice 0, distances the diagonal of the image in mm). Every case
then has a finite value for every score, so means never meet a NaN, and the cases are counted.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
    get_confusion_matrix,
)

from pipeline.errors import ConfigError

# score name -> (what the report calls it, True if higher is better)
METRICS = {
    "dice": ("Dice", True),
    "iou": ("IoU", True),
    "sensitivity": ("Sensitivity", True),
    "precision": ("Precision", True),
    "hd95_mm": ("HD95 (mm)", False),
    "assd_mm": ("ASSD (mm)", False),
    "nsd": ("Surface Dice", True),
}
DISTANCES = ("hd95_mm", "assd_mm")
ABSENT_FROM = ("both", "reference", "prediction")  # values of a case's absent_<class> column, besides "neither"


@dataclass(frozen=True)
class LabelledCase:
    """A prediction and its reference (label values, same grid), spacing in mm per axis, and the image if known."""

    case_id: str
    prediction: np.ndarray
    reference: np.ndarray
    spacing: tuple[float, ...]
    image: np.ndarray | None = None


def tolerances(nsd_tolerance_mm: float | Sequence[float], classes: dict[int, str]) -> dict[int, float]:
    """The surface-Dice tolerance of each foreground class: one for all, or one per class in label order."""
    if isinstance(nsd_tolerance_mm, (int, float)):
        nsd_tolerance_mm = [nsd_tolerance_mm] * len(classes)
    if any(t < 0 for t in nsd_tolerance_mm):
        raise ConfigError(f"evaluate.nsd_tolerance_mm: {nsd_tolerance_mm} has a negative tolerance")
    if len(nsd_tolerance_mm) != len(classes):
        raise ConfigError(
            f"evaluate.nsd_tolerance_mm: {len(nsd_tolerance_mm)} tolerances for {len(classes)} classes "
            f"({', '.join(classes.values())}); give one number, or one per class"
        )
    return dict(zip(classes, map(float, nsd_tolerance_mm)))


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(np.linalg.norm(np.asarray(shape) * np.asarray(spacing)))


def _scores_of_present_class(
    prediction: torch.Tensor, reference: torch.Tensor, spacing: Sequence[float], tolerance: float
) -> dict[str, float]:
    confusion = get_confusion_matrix(prediction, reference)
    kwargs = {"include_background": True, "spacing": spacing}
    with warnings.catch_warnings(), _one_torch_thread():  # MONAI's own deprecation notices inside its edge finder
        warnings.simplefilter("ignore")
        return {
            "dice": compute_dice(prediction, reference, ignore_empty=False).item(),
            "iou": compute_iou(prediction, reference, ignore_empty=False).item(),
            "sensitivity": compute_confusion_matrix_metric("sensitivity", confusion).item(),
            "precision": compute_confusion_matrix_metric("precision", confusion).item(),
            "hd95_mm": compute_hausdorff_distance(prediction, reference, percentile=95, **kwargs).item(),
            "assd_mm": compute_average_surface_distance(prediction, reference, symmetric=True, **kwargs).item(),
            "nsd": compute_surface_dice(prediction, reference, [tolerance], **kwargs).item(),
        }


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """The metrics' reductions over one mask are too small to gain from threads; on a busy machine, threads
    waiting for cores made scoring 30 times slower (2.3 s against 0.07 s for a hippocampus case)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _scores_by_rule(absent_from: str, diagonal: float) -> dict[str, float]:
    perfect = absent_from == "both"
    return {name: (0.0 if perfect else diagonal) if name in DISTANCES else float(perfect) for name in METRICS}


def case_scores(
    prediction: np.ndarray,
    reference: np.ndarray,
    classes: dict[int, str],
    spacing: Sequence[float],
    tolerance_mm: dict[int, float],
) -> dict[str, float | str]:
    """One row of the per-case table: ``<score>_<class>`` and ``<score>_mean`` (over classes), ``pixel_error``
    (the share of voxels with another label) and ``absent_<class>`` (which side lacks the class, or "neither").

    ``prediction`` and ``reference`` hold label values on the same grid; ``classes`` maps the foreground values
    to score to their names (other values count as background); ``spacing`` is in mm, per array axis.
    """
    spacing = [float(s) for s in spacing]  # MONAI takes Python numbers only
    diagonal = diagonal_mm(reference.shape, spacing)
    per_class, absent = {}, {}
    for value, name in classes.items():
        predicted, expected = prediction == value, reference == value
        absent_from = {(False, False): "both", (True, False): "reference", (False, True): "prediction"}.get(
            (bool(predicted.any()), bool(expected.any())), "neither"
        )
        if absent_from != "neither":
            per_class[name] = _scores_by_rule(absent_from, diagonal)
        else:
            as_tensor = lambda mask: torch.from_numpy(mask)[None, None].float()  # noqa: E731
            per_class[name] = _scores_of_present_class(
                as_tensor(predicted), as_tensor(expected), spacing, tolerance_mm[value]
            )
        absent[f"absent_{name}"] = absent_from
    row: dict[str, float | str] = {}
    for metric in METRICS:
        values = [per_class[name][metric] for name in classes.values()]
        row.update({f"{metric}_{name}": v for name, v in zip(classes.values(), values)})
        row[f"{metric}_mean"] = float(np.mean(values))
    row["pixel_error"] = float((prediction != reference).mean())
    return {**row, **absent}


def summarise(per_case: pd.DataFrame, classes: Sequence[str]) -> dict:
    """Means at the top level under the per-case column names (``dice_mean`` and ``dice_<class>`` as before),
    medians and standard deviations under ``median`` and ``std``, and the empty-case counts per class."""
    columns = [f"{m}_{c}" for m in METRICS for c in (*classes, "mean")] + ["pixel_error"]
    return {
        "n_cases": len(per_case),
        **{column: float(per_case[column].mean()) for column in columns},
        "median": {column: float(per_case[column].median()) for column in columns},
        "std": {column: float(per_case[column].std(ddof=0)) for column in columns},  # 0, not NaN, for one case
        "empty_cases": {
            name: {kind: int((per_case[f"absent_{name}"] == kind).sum()) for kind in ABSENT_FROM} for name in classes
        },
    }
