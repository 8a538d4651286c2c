"""Score a folder of predicted label maps against a folder of reference label maps, matched by file name,
so that any tool's output (nnU-Net, TotalSegmentator, ...) is scored by the same code as this pipeline's."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.data.volumes import FILE_SUFFIXES, read_image, strip_suffix
from pipeline.errors import InputError
from pipeline.evaluation.metrics import LabelledCase
from pipeline.evaluation.scoring import evaluate_cases

GRID_TOLERANCE = 1e-3  # mm for spacing and origin, and for the direction cosines


@dataclass(frozen=True)
class Matched:
    pairs: dict[str, tuple[Path, Path]]  # case -> (prediction, reference)
    only_predictions: list[str]
    only_references: list[str]


def label_files(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by case name (other files, such as nnU-Net's JSON, are not label maps)."""
    if not Path(folder).is_dir():
        raise InputError(f"{folder}: no such folder")
    files = {}
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.name.lower().endswith(FILE_SUFFIXES):
            case = strip_suffix(path)
            if case in files:
                raise InputError(f"{folder}: two files for case '{case}': {files[case].name} and {path.name}")
            files[case] = path
    return files


def match(pred_dir: Path, ref_dir: Path) -> Matched:
    predictions, references = label_files(pred_dir), label_files(ref_dir)
    pairs = {case: (predictions[case], references[case]) for case in sorted(predictions.keys() & references.keys())}
    if not pairs:
        raise InputError(f"{pred_dir} and {ref_dir}: no file names in common, nothing to score")
    return Matched(
        pairs,
        sorted(p.name for c, p in predictions.items() if c not in pairs),
        sorted(p.name for c, p in references.items() if c not in pairs),
    )


def check_same_grid(prediction: sitk.Image, reference: sitk.Image, prediction_path: Path, reference_path: Path) -> None:
    """Scores are only meaningful voxel for voxel: a prediction on another grid is refused, never resampled."""
    problems = []
    if prediction.GetSize() != reference.GetSize():
        problems.append(f"shape {prediction.GetSize()} vs {reference.GetSize()}")
    else:
        for what in ("Spacing", "Origin", "Direction"):
            a, b = (np.array(getattr(image, f"Get{what}")()) for image in (prediction, reference))
            if not np.allclose(a, b, rtol=0, atol=GRID_TOLERANCE):
                problems.append(f"{what.lower()} {np.round(a, 4).tolist()} vs {np.round(b, 4).tolist()}")
    if problems:
        raise InputError(
            f"{prediction_path} and {reference_path}: not on the same grid ({'; '.join(problems)}); "
            "resample the prediction onto the reference's grid first"
        )


def label_array(image: sitk.Image, path: Path) -> np.ndarray:
    """Label values indexed (x, y[, z]) as the spacing is."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: {image.GetNumberOfComponentsPerPixel()} values per voxel, not a label map")
    array = sitk.GetArrayViewFromImage(image).T
    if np.issubdtype(array.dtype, np.integer):
        return np.array(array)  # a copy in the file's own type, no longer tied to the image
    whole = np.rint(array)
    if not np.array_equal(whole, array):
        raise InputError(f"{path}: label values are not whole numbers")
    return whole.astype(np.int32)


def parse_labels(text: str) -> dict[int, str]:
    """``1=liver,2=spine``; or JSON, inline or a file: {value: name}, {name: value} (nnU-Net's dataset.json),
    or a dataset.json whose ``labels`` holds either. Background (0) is never scored."""
    source = Path(text)
    if text.strip().startswith("{") or source.suffix == ".json":
        try:
            content = json.loads(source.read_text() if source.suffix == ".json" else text)
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"--labels {text}: not readable JSON ({err})") from None
        content = content.get("labels", content) if isinstance(content, dict) else content
        pairs = [(k, v) if str(k).lstrip("-").isdigit() else (v, k) for k, v in dict(content).items()]
    else:
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    try:
        labels = {int(value): str(name).strip() for value, name in pairs}
    except (TypeError, ValueError):
        raise InputError(f"--labels {text}: expected VALUE=NAME pairs such as 1=liver,2=spine, or JSON") from None
    labels.pop(0, None)
    if not labels:
        raise InputError(f"--labels {text}: no foreground label")
    return dict(sorted(labels.items()))


def labels_found(paths: Sequence[Path]) -> dict[int, str]:
    """Every non-zero value in the files, named by itself: the classes when none are given."""
    values: set[int] = set()
    for path in paths:
        values |= set(np.unique(label_array(read_image(path), path)).tolist())
    values.discard(0)
    if not values:
        raise InputError("no foreground label in any file; give --labels")
    return {value: str(value) for value in sorted(values)}


def evaluate_folders(
    pred_dir: Path,
    ref_dir: Path,
    out_dir: Path,
    labels: dict[int, str] | None = None,
    nsd_tolerance_mm: float | Sequence[float] = 1.0,
    image_dir: Path | None = None,
) -> tuple[dict, Matched]:
    """Write the per-case CSV, ``metrics.json`` and ``report.html`` of the files the two folders share; the
    files found in only one of them are reported, not scored. ``image_dir`` gives the overlays a background."""
    matched = match(Path(pred_dir), Path(ref_dir))
    images = label_files(Path(image_dir)) if image_dir else {}
    if labels is None:
        labels = labels_found([path for pair in matched.pairs.values() for path in pair])

    def load(case: str) -> LabelledCase:
        prediction_path, reference_path = matched.pairs[case]
        prediction, reference = read_image(prediction_path), read_image(reference_path)
        check_same_grid(prediction, reference, prediction_path, reference_path)
        image = None
        if case in images:
            background = read_image(images[case])
            check_same_grid(background, reference, images[case], reference_path)
            image = sitk.GetArrayFromImage(background).T
        return LabelledCase(
            case,
            label_array(prediction, prediction_path),
            label_array(reference, reference_path),
            tuple(reference.GetSpacing()),
            image,
        )

    summary = evaluate_cases(
        list(matched.pairs),
        load,
        labels,
        nsd_tolerance_mm,
        Path(out_dir),
        title="Segmentation evaluation",
        details={"predictions": str(Path(pred_dir).resolve()), "references": str(Path(ref_dir).resolve())},
        unmatched={
            "predictions without a reference": matched.only_predictions,
            "references without a prediction": matched.only_references,
        },
    )
    return summary, matched
