"""Stage 2: validate every case, fingerprint the dataset, plan, and prepare the cases for training.

Rejected cases are named in ``validation.csv`` and skipped (or stop the stage when
``preprocess.on_rejected: fail``). Work is spread over a process pool and is incremental:
a case is read again only when its files or the plan changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor
from tqdm import tqdm

from pipeline.config import DataConfig, PreprocessConfig, WeightMapConfig
from pipeline.data.dataset import Case, Dataset, class_indices, read_dataset
from pipeline.data.plan import case_fingerprint, plan_digest, plan_preprocessing, plan_spacing
from pipeline.data.transforms import IMAGE, LABEL, prepare
from pipeline.data.validate import case_result, check_case, report
from pipeline.data.volumes import to_metatensor
from pipeline.data.weight_map import boundary_weight_map
from pipeline.errors import DatasetError
from pipeline.files import atomic_path, write_csv, write_json
from pipeline.networks.plan import plan_experiment

log = logging.getLogger(__name__)
FINGERPRINT_FILE, PLAN_FILE, MANIFEST_FILE, VALIDATION_FILE = (
    "fingerprint.json",
    "plan.json",
    "manifest.csv",
    "validation.csv",
)
WRITTEN_COLUMNS = ("image", "label", "weight", "shape", "spacing", "crop_start", "crop_end")


def input_digest(case: Case) -> str:
    """Content hash of a case's files (every file of a DICOM folder)."""
    digest = hashlib.sha256()
    for path in (case.image, case.label):
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _fingerprint_job(job: tuple[Case, set[int], int]) -> dict[str, Any]:
    case, classes, dimensions = job
    torch.set_num_threads(1)
    entry, checked = case_result(case, classes, dimensions)
    if checked is not None:
        entry["fingerprint"] = case_fingerprint(case.case_id, checked.image, checked.label)
    return entry


def _nifti_affine(affine: np.ndarray) -> np.ndarray:
    """NIfTI wants 4x4; a 2D image's 3x3 affine is embedded in it."""
    if affine.shape == (4, 4):
        return affine
    full = np.eye(4)
    full[:2, :2], full[:2, 3] = affine[:2, :2], affine[:2, 2]
    return full


def _save_nifti(volume: torch.Tensor, path: Path, dtype: type) -> None:
    array = volume[0].numpy()
    array = (np.rint(array) if dtype == np.uint8 else array).astype(dtype)
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(array, _nifti_affine(np.asarray(volume.affine, dtype=np.float64))), tmp)


def _prepare_job(job: tuple[Case, set[int], int, dict[str, Any], WeightMapConfig | None, Path]) -> dict[str, Any]:
    case, classes, dimensions, plan, weight_map, out_dir = job
    torch.set_num_threads(1)
    checked = check_case(case, classes, dimensions)
    keys = (IMAGE, LABEL)
    label = to_metatensor(checked.label)
    label.array = class_indices(sorted(classes))[np.rint(label.array).astype(np.int64)]
    data = prepare(plan, keys)({IMAGE: to_metatensor(checked.image), LABEL: label})
    image_out, label_out = Path("images") / f"{case.case_id}.nii.gz", Path("labels") / f"{case.case_id}.nii.gz"
    _save_nifti(data[IMAGE], out_dir / image_out, np.float32)
    _save_nifti(data[LABEL], out_dir / label_out, np.uint8)
    weight_out = Path("weights") / f"{case.case_id}.nii.gz" if weight_map else ""
    if weight_map:
        spacing = tuple(data[LABEL].pixdim.tolist())
        weights = boundary_weight_map(data[LABEL][0].numpy().astype(np.uint8), spacing, weight_map.w0, weight_map.sigma)
        _save_nifti(
            MetaTensor(torch.from_numpy(weights)[None], affine=data[LABEL].affine), out_dir / weight_out, np.float32
        )
    return {
        "image": str(image_out),
        "label": str(label_out),
        "weight": str(weight_out),
        "shape": "x".join(map(str, data[IMAGE].shape[1:])),
        "spacing": "x".join(f"{s:.4g}" for s in data[IMAGE].pixdim.tolist()),
        "crop_start": "x".join(map(str, data.get("foreground_start_coord", []))),
        "crop_end": "x".join(map(str, data.get("foreground_end_coord", []))),
    }


def _run(function, jobs: list, description: str, workers: int) -> list:
    if not jobs:
        return []
    if workers <= 1:
        return [function(job) for job in tqdm(jobs, desc=description, unit="case")]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(function, jobs, chunksize=4), total=len(jobs), desc=description, unit="case"))


def _remove_unlisted(out_dir: Path, listed: set[str]) -> None:
    """Drop prepared files of cases no longer in the dataset (the folder persists between runs)."""
    for folder in ("images", "labels", "weights"):
        for path in (out_dir / folder).glob("*.nii.gz"):
            if str(path.relative_to(out_dir)) not in listed:
                path.unlink()


def _previous_fingerprints(path: Path) -> dict[str, Any]:
    """Per-case results of an earlier run; nothing, if there is none or it is unreadable or of another version."""
    try:
        cases = json.loads(path.read_text())["cases"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return {}
    return {
        case_id: entry
        for case_id, entry in cases.items()
        if isinstance(entry, dict) and {"digest", "status", "file", "reason"} <= entry.keys()
    }


def _earlier_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of an earlier run's manifest by case; nothing, if it lacks what reuse needs."""
    try:
        manifest = pd.read_csv(path, dtype={"case_id": str}, keep_default_na=False)
    except (FileNotFoundError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return {}
    if not {"case_id", "input_digest", "plan_digest", *WRITTEN_COLUMNS} <= set(manifest.columns):
        return {}
    return manifest.set_index("case_id").to_dict("index")


def _validate_and_fingerprint(
    dataset: Dataset, digests: dict[str, str], previous: dict[str, Any], workers: int
) -> dict[str, Any]:
    """Per case: status, reason and fingerprint; what an earlier run found for unchanged files is reused."""
    fresh = [case for case in dataset.cases if previous.get(case.case_id, {}).get("digest") != digests[case.case_id]]
    jobs = [(case, set(dataset.labels), dataset.dimensions) for case in fresh]
    found = {
        case.case_id: {"digest": digests[case.case_id], **result}
        for case, result in zip(fresh, _run(_fingerprint_job, jobs, "validating", workers))
    }
    return {case.case_id: found.get(case.case_id) or previous[case.case_id] for case in dataset.cases}


def _manifest_row(
    case: Case,
    raw_dir: Path,
    fingerprint: dict[str, Any],
    written: dict[str, Any],
    digests: tuple[str, str],
    values: list[int],
) -> dict[str, Any]:
    return {
        "case_id": case.case_id,
        "raw_image": str(case.image.relative_to(raw_dir.resolve())),
        "raw_label": str(case.label.relative_to(raw_dir.resolve())),
        "original_shape": "x".join(map(str, fingerprint["shape"])),
        "original_spacing": "x".join(f"{s:.4g}" for s in fingerprint["spacing"]),
        **{k: written[k] for k in WRITTEN_COLUMNS},
        **{f"voxels_{v}": fingerprint["class_voxels"].get(str(v), 0) for v in values},
        "input_digest": digests[0],
        "plan_digest": digests[1],
    }


def preprocess(raw_dir: Path, out_dir: Path, data_config: DataConfig, config: PreprocessConfig) -> pd.DataFrame:
    """Write ``images/``, ``labels/``, ``manifest.csv``, ``validation.csv``, ``fingerprint.json``,
    ``plan.json`` and ``dataset.json`` under ``out_dir``."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    workers = config.workers or os.cpu_count() or 1
    dataset = read_dataset(raw_dir, data_config)
    values = sorted(dataset.labels)
    digests = {case.case_id: input_digest(case) for case in dataset.cases}
    cases, accepted, n_rejected = _accepted(dataset, digests, raw_dir, out_dir, config, workers)
    fingerprints = [cases[c.case_id]["fingerprint"] for c in accepted]
    spacing, why = plan_spacing(fingerprints, config)
    plan = plan_preprocessing(fingerprints, dataset.modality, config, spacing)
    experiment = {
        "reasons": {"spacing": why},
        **plan_experiment(fingerprints, plan["spacing"], dataset.dimensions),
    }
    weight_map = config.weight_map.model_dump() if config.weight_map else None
    # weight maps are not part of the plan inference needs
    digest = plan_digest({**plan, "weight_map": weight_map} if weight_map else plan)
    earlier = _earlier_manifest(out_dir / MANIFEST_FILE)

    def up_to_date(case: Case) -> bool:
        row = earlier.get(case.case_id)
        return (
            bool(row)
            and (row["input_digest"], row["plan_digest"]) == (digests[case.case_id], digest)
            and (out_dir / row["image"]).is_file()
        )

    stale = [case for case in accepted if not up_to_date(case)]
    jobs = [(case, set(values), dataset.dimensions, plan, config.weight_map, out_dir) for case in stale]
    written = {**earlier, **dict(zip((c.case_id for c in stale), _run(_prepare_job, jobs, "preprocessing", workers)))}
    manifest = pd.DataFrame(
        [
            _manifest_row(
                c, raw_dir, cases[c.case_id]["fingerprint"], written[c.case_id], (digests[c.case_id], digest), values
            )
            for c in accepted
        ]
    )
    _remove_unlisted(out_dir, set(manifest.image) | set(manifest.label) | set(manifest.weight))
    _write_records(out_dir, raw_dir, dataset, cases, (plan, experiment), manifest, values)
    log.info("%d cases prepared, %d reused, %d rejected", len(stale), len(accepted) - len(stale), n_rejected)
    return manifest


def _accepted(
    dataset: Dataset, digests: dict[str, str], raw_dir: Path, out_dir: Path, config: PreprocessConfig, workers: int
) -> tuple[dict[str, dict], list[Case], int]:
    """Every case validated and fingerprinted (reusing earlier fingerprints of unchanged files), the validation
    report written; the cases usable, and how many were rejected."""
    cases = _validate_and_fingerprint(dataset, digests, _previous_fingerprints(out_dir / FINGERPRINT_FILE), workers)
    validation = report(dataset.problems, cases)
    write_csv(out_dir / VALIDATION_FILE, validation)
    rejected = validation[validation.status == "rejected"]
    for row in rejected.itertuples():
        log.warning("rejected %s: %s: %s", row.case_id, row.file, row.reason)
    if len(rejected) and config.on_rejected == "fail":
        raise DatasetError(
            f"{raw_dir}: {len(rejected)} case(s) rejected (preprocess.on_rejected is 'fail'); see {out_dir / VALIDATION_FILE}"
        )
    accepted = [case for case in dataset.cases if cases[case.case_id]["status"] != "rejected"]
    if not accepted:
        raise DatasetError(f"{raw_dir}: no usable case; see {out_dir / VALIDATION_FILE}")
    return cases, accepted, len(rejected)


def _write_records(
    out_dir: Path,
    raw_dir: Path,
    dataset: Dataset,
    cases: dict[str, dict],
    plans: tuple[dict[str, Any], dict[str, Any]],
    manifest: pd.DataFrame,
    values: list[int],
) -> None:
    """The fingerprint, the plan (what inference needs, then what training plans), the manifest, dataset.json."""
    preprocessing, experiment = plans
    write_json(out_dir / FINGERPRINT_FILE, {"modality": dataset.modality, "cases": cases})
    write_json(out_dir / PLAN_FILE, {**preprocessing, **experiment})
    write_csv(out_dir / MANIFEST_FILE, manifest)
    write_json(
        out_dir / "dataset.json",
        {
            "name": dataset.name,
            "raw_dir": str(raw_dir),
            "modality": dataset.modality,
            "dimensions": dataset.dimensions,
            "labels": {str(index): dataset.labels[value] for index, value in enumerate(values)},
            "label_values": values,
            "preprocess": preprocessing,
        },
    )
