"""Checking every case before anything is trained on it.

Each case ends ok, warning (usable, but worth a look) or rejected, with the reason in words
that name the file. The same checks run in ``medseg validate`` and in the preprocess stage.
Files are only read, never modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from pipeline.config import DataConfig
from pipeline.data.dataset import Case, Dataset, Problem, read_dataset
from pipeline.data.volumes import Series, choose_series, read_image, read_series
from pipeline.errors import InputError
from pipeline.files import write_csv

GEOMETRY_TOLERANCE = 1e-3
REPORT_COLUMNS = ["case_id", "status", "file", "reason"]


class CaseRejected(Exception):
    def __init__(self, file: Path, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


@dataclass
class CheckedCase:
    case: Case
    image: sitk.Image
    label: sitk.Image
    warnings: list[str]


def _read(path: Path) -> tuple[sitk.Image, Series | None]:
    """The image, and the DICOM series it came from (found once, for both reading and its spacing check)."""
    try:
        if path.is_dir():
            series = choose_series(path)
            return read_series(path, series), series
        return read_image(path), None
    except InputError as err:
        raise CaseRejected(path, str(err).removeprefix(f"{path}: ")) from None


def _check_dimensions(path: Path, image: sitk.Image, dimensions: int) -> None:
    found = image.GetDimension() + (1 if image.GetNumberOfComponentsPerPixel() > 1 else 0)
    if found != dimensions:
        size = "x".join(map(str, image.GetSize()))
        raise CaseRejected(path, f"{found}D image ({size}) in a {dimensions}D dataset")


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return all(
        np.allclose(x, y, atol=GEOMETRY_TOLERANCE, rtol=GEOMETRY_TOLERANCE)
        for x, y in (
            (a.GetSpacing(), b.GetSpacing()),
            (a.GetOrigin(), b.GetOrigin()),
            (a.GetDirection(), b.GetDirection()),
        )
    )


def check_case(case: Case, classes: set[int], dimensions: int) -> CheckedCase:
    """The case's images, read and checked; raises ``CaseRejected`` at the first problem."""
    (image, series), (label, _) = _read(case.image), _read(case.label)
    _check_dimensions(case.image, image, dimensions)
    _check_dimensions(case.label, label, dimensions)
    if image.GetSize() != label.GetSize():
        raise CaseRejected(case.label, f"label shape {label.GetSize()} differs from image shape {image.GetSize()}")
    if not _same_geometry(image, label):
        raise CaseRejected(case.label, "label affine (position, orientation or spacing) differs from the image's")
    pixels = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(pixels).all():
        raise CaseRejected(case.image, "image holds NaN or infinite voxels")
    if pixels.min() == pixels.max():
        raise CaseRejected(case.image, f"image is constant (every voxel {pixels.min()})")
    values = np.unique(sitk.GetArrayViewFromImage(label))
    if not np.isfinite(values).all() or not np.equal(values, np.round(values)).all():
        raise CaseRejected(case.label, "label values are not whole numbers")
    unexpected = sorted(set(values.astype(np.int64).tolist()) - classes)
    if unexpected:
        raise CaseRejected(case.label, f"label values {unexpected} are not declared classes {sorted(classes)}")
    warnings = []
    if set(values.tolist()) <= {0}:
        warnings.append(f"{case.label}: label is all background")
    if series is not None and not series.uniform:
        warnings.append(f"{case.image}: DICOM slices are not evenly spaced; the volume is read as if they were")
    return CheckedCase(case, image, label, warnings)


def case_result(case: Case, classes: set[int], dimensions: int) -> tuple[dict[str, str], CheckedCase | None]:
    """The case's report entry (status, file, reason), and its checked images unless it was rejected."""
    try:
        checked = check_case(case, classes, dimensions)
    except CaseRejected as rejected:
        return {"status": "rejected", "file": str(rejected.file), "reason": rejected.reason}, None
    return {
        "status": "warning" if checked.warnings else "ok",
        "file": str(case.image),
        "reason": "; ".join(checked.warnings),
    }, checked


def report(problems: list[Problem], results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per case (and per unpaired file): status ok, warning or rejected, and why."""
    rows = [{"case_id": p.case_id, "status": "rejected", "file": str(p.file), "reason": p.reason} for p in problems]
    rows += [{"case_id": case_id, **{k: result[k] for k in REPORT_COLUMNS[1:]}} for case_id, result in results.items()]
    return pd.DataFrame(rows, columns=REPORT_COLUMNS).sort_values(["case_id", "status"], ignore_index=True)


def validate_dataset(dataset: Dataset) -> pd.DataFrame:
    classes = set(dataset.labels)
    return report(
        dataset.problems, {case.case_id: case_result(case, classes, dataset.dimensions)[0] for case in dataset.cases}
    )


def validate(root: Path, report_csv: Path, config: DataConfig | None = None) -> pd.DataFrame:
    report = validate_dataset(read_dataset(root, config))
    write_csv(report_csv, report)
    return report
