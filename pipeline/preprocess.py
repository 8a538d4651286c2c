"""Stage 2: check every case, bring it to a common orientation and intensity scale, and list it.

A case that fails a check is named in ``rejected.csv`` with its reason and skipped;
the stage fails only when no case is left.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline.config import PreprocessConfig
from pipeline.dataset import Case, DatasetError, Problem, read_dataset
from pipeline.files import atomic_path, write_csv, write_json
from pipeline.transforms import IMAGE, LABEL, load, prepare

log = logging.getLogger(__name__)
AFFINE_TOLERANCE = 1e-3


class CaseRejected(Exception):
    def __init__(self, file: Path, reason: str):
        super().__init__(reason)
        self.file = file
        self.reason = reason


def check_case(case: Case, image: torch.Tensor, label: torch.Tensor, classes: set[int]) -> None:
    """Raise ``CaseRejected`` naming the file and the first problem found."""
    for path, volume in ((case.image, image), (case.label, label)):
        if volume.ndim != 4 or volume.shape[0] != 1:
            raise CaseRejected(path, f"expected a 3D volume, found shape {tuple(volume.shape[1:])}")
    if image.shape != label.shape:
        raise CaseRejected(case.label, f"label shape {tuple(label.shape[1:])} differs from image shape {tuple(image.shape[1:])}")
    if not np.allclose(image.affine, label.affine, atol=AFFINE_TOLERANCE):
        raise CaseRejected(case.label, "label affine (position, orientation or spacing) differs from the image's")
    if not torch.isfinite(image).all():
        raise CaseRejected(case.image, "image holds NaN or infinite voxels")
    if image.min() == image.max():
        raise CaseRejected(case.image, "image is constant")
    if not torch.isfinite(label).all() or not torch.equal(label, label.round()):
        raise CaseRejected(case.label, "label values are not whole numbers")
    unexpected = set(torch.unique(label).int().tolist()) - classes
    if unexpected:
        raise CaseRejected(case.label, f"label values {sorted(unexpected)} are not declared classes {sorted(classes)}")


def _save_nifti(volume: torch.Tensor, path: Path, dtype: type) -> None:
    array = volume[0].numpy().astype(dtype)
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(array, np.asarray(volume.affine, dtype=np.float64)), tmp)


def preprocess_case(case: Case, classes: set[int], config: PreprocessConfig, raw_dir: Path, out_dir: Path) -> dict:
    keys = (IMAGE, LABEL)
    try:
        data = load(keys)({IMAGE: str(case.image), LABEL: str(case.label)})
    except Exception as err:  # a reader fails in many ways on a broken file; all mean "unreadable"
        raise CaseRejected(case.image, f"cannot be read as a volume pair: {err}") from None
    check_case(case, data[IMAGE], data[LABEL], classes)
    original_axcodes = "".join(nib.aff2axcodes(np.asarray(data[IMAGE].affine)))
    data = prepare(config, keys)(data)
    image, label = data[IMAGE], data[LABEL]
    image_out = out_dir / "images" / f"{case.case_id}.nii.gz"
    label_out = out_dir / "labels" / f"{case.case_id}.nii.gz"
    _save_nifti(image, image_out, np.float32)
    _save_nifti(label, label_out, np.uint8)
    counts = torch.bincount(label.flatten().long(), minlength=max(classes) + 1)
    return {
        "case_id": case.case_id,
        "raw_image": str(case.image.relative_to(raw_dir.resolve())),
        "raw_label": str(case.label.relative_to(raw_dir.resolve())),
        "image": str(image_out.relative_to(out_dir)),
        "label": str(label_out.relative_to(out_dir)),
        "original_orientation": original_axcodes,
        "shape": "x".join(map(str, image.shape[1:])),
        "spacing": "x".join(f"{s:.3g}" for s in image.pixdim.tolist()),
        **{f"voxels_{c}": int(counts[c]) for c in sorted(classes)},
    }


def preprocess(raw_dir: Path, out_dir: Path, config: PreprocessConfig) -> pd.DataFrame:
    """Write ``images/``, ``labels/``, ``manifest.csv``, ``rejected.csv`` and ``dataset.json`` under ``out_dir``."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    dataset = read_dataset(raw_dir)
    classes = set(dataset.labels)
    rows: list[dict] = []
    problems: list[Problem] = list(dataset.problems)
    for case in tqdm(dataset.cases, desc="preprocessing", unit="case"):
        try:
            rows.append(preprocess_case(case, classes, config, raw_dir, out_dir))
        except CaseRejected as rejected:
            problems.append(Problem(case.case_id, rejected.file, rejected.reason))
    for problem in problems:
        log.warning("skipped %s: %s: %s", problem.case_id, problem.file, problem.reason)
    if not rows:
        raise DatasetError(f"{raw_dir}: no usable case; see {out_dir / 'rejected.csv'}")
    manifest = pd.DataFrame(rows)
    write_csv(out_dir / "manifest.csv", manifest)
    write_csv(out_dir / "rejected.csv", pd.DataFrame([vars(p) for p in problems], columns=["case_id", "file", "reason"]))
    write_json(
        out_dir / "dataset.json",
        {
            "name": dataset.name,
            "raw_dir": str(raw_dir),
            "modality": dataset.modality,
            "labels": {str(k): v for k, v in sorted(dataset.labels.items())},
            "preprocess": config.model_dump(),
        },
    )
    return manifest
