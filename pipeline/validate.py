"""Checking every case before anything is trained on it.

Each case ends ok, warning (usable, but worth a look) or rejected, with the reason in words
that name the file. The same checks run in ``medseg validate`` and in the preprocess stage.
Files are only read, never modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from pipeline.config import DataConfig
from pipeline.dataset import Case, Dataset, read_dataset
from pipeline.errors import InputError
from pipeline.files import write_csv
from pipeline.volumes import choose_series, read_image

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


def _read(path: Path) -> sitk.Image:
    try:
        return read_image(path)
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
        for x, y in ((a.GetSpacing(), b.GetSpacing()), (a.GetOrigin(), b.GetOrigin()), (a.GetDirection(), b.GetDirection()))
    )


def check_case(case: Case, classes: set[int], dimensions: int) -> CheckedCase:
    """The case's images, read and checked; raises ``CaseRejected`` at the first problem."""
    image, label = _read(case.image), _read(case.label)
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
    if case.image.is_dir() and not choose_series(case.image).uniform:
        warnings.append(f"{case.image}: DICOM slices are not evenly spaced; the volume is read as if they were")
    return CheckedCase(case, image, label, warnings)


def validate_dataset(dataset: Dataset) -> pd.DataFrame:
    """One row per case (and per unpaired file): status ok, warning or rejected, and why."""
    rows = [{"case_id": p.case_id, "status": "rejected", "file": str(p.file), "reason": p.reason} for p in dataset.problems]
    for case in dataset.cases:
        try:
            checked = check_case(case, set(dataset.labels), dataset.dimensions)
        except CaseRejected as rejected:
            rows.append({"case_id": case.case_id, "status": "rejected", "file": str(rejected.file), "reason": rejected.reason})
            continue
        status = "warning" if checked.warnings else "ok"
        rows.append({"case_id": case.case_id, "status": status, "file": str(case.image), "reason": "; ".join(checked.warnings)})
    return pd.DataFrame(rows, columns=REPORT_COLUMNS).sort_values(["case_id", "status"], ignore_index=True)


def validate(root: Path, report_csv: Path, config: DataConfig | None = None) -> pd.DataFrame:
    report = validate_dataset(read_dataset(root, config))
    write_csv(report_csv, report)
    return report
