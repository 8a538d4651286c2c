"""Finding the cases of a dataset, in either accepted layout.

- MSD: ``dataset.json`` declares labels, modality and dimensionality and lists the pairs
  (``imagesTr/``, ``labelsTr/``).
- Folders: ``images/`` and ``labels/``, matched by name (``case_001.nrrd`` with
  ``case_001.nii.gz``; a DICOM series is a sub-folder of ``images/``); labels and modality
  come from ``data.labels`` and ``data.modality`` in params.

Files that cannot be paired, or entries that point outside the folder, are reported as
problems with their reason; they never stop the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.volumes import FILE_SUFFIXES, strip_suffix
from pipeline.errors import DatasetError


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class Problem:
    case_id: str
    file: Path
    reason: str


@dataclass
class Dataset:
    root: Path
    name: str
    modality: str
    labels: dict[int, str]
    dimensions: int
    cases: list[Case]
    problems: list[Problem] = field(default_factory=list)


def class_indices(label_values: list[int]) -> np.ndarray:
    """Lookup table from a declared label value (ISBI's 255, say) to its class index 0..K-1."""
    table = np.zeros(max(label_values) + 1, dtype=np.uint8)
    table[sorted(label_values)] = np.arange(len(label_values))
    return table


def _entries(folder: Path) -> dict[str, Path]:
    """Volumes in a folder by case id: image files, and sub-folders (DICOM series). Hidden files are skipped."""
    if not folder.is_dir():
        return {}
    return {
        strip_suffix(p): p
        for p in sorted(folder.iterdir())
        if not p.name.startswith(".") and (p.is_dir() or p.name.lower().endswith(FILE_SUFFIXES))
    }


def _pair(images: dict[str, Path], labels: dict[str, Path]) -> tuple[list[Case], list[Problem]]:
    cases = [Case(c, images[c], labels[c]) for c in sorted(images.keys() & labels.keys())]
    problems = [Problem(c, images[c], "image has no label") for c in sorted(images.keys() - labels.keys())]
    problems += [Problem(c, labels[c], "label has no image") for c in sorted(labels.keys() - images.keys())]
    return cases, problems


def _read_folders(root: Path, config: DataConfig) -> Dataset:
    if not config.labels or not config.modality:
        raise DatasetError(f"{root}: the images/labels layout needs data.labels and data.modality in params")
    cases, problems = _pair(_entries(root / config.images_folder), _entries(root / config.labels_folder))
    labels = {int(k): v for k, v in config.labels.items()}
    return Dataset(root, root.name, config.modality, labels, config.dimensions, cases, problems)


def _read_msd(root: Path) -> Dataset:
    descriptor = root / "dataset.json"
    try:
        meta = json.loads(descriptor.read_text())
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
        modality = str(meta.get("modality", {}).get("0", "unknown"))
        dimensions = 2 if str(meta.get("tensorImageSize", "3D")).upper() == "2D" else 3
        entries = [(e["image"], e["label"]) for e in meta["training"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise DatasetError(f"{descriptor}: not a valid MSD dataset.json ({type(err).__name__}: {err})") from None

    cases: list[Case] = []
    problems: list[Problem] = []
    for image_entry, label_entry in entries:
        image, label = (root / image_entry).resolve(), (root / label_entry).resolve()
        case_id = strip_suffix(image)
        outside = [e for e, p in ((image_entry, image), (label_entry, label)) if not p.is_relative_to(root.resolve())]
        if outside:
            problems.append(Problem(case_id, descriptor, f"entry '{outside[0]}' points outside the dataset folder"))
        elif case_id in {c.case_id for c in cases}:
            problems.append(Problem(case_id, descriptor, f"case '{case_id}' is listed twice in dataset.json"))
        elif not (image.exists() and label.exists()):
            missing = image if not image.exists() else label
            problems.append(Problem(case_id, missing, "listed in dataset.json but the file does not exist"))
        else:
            cases.append(Case(case_id, image, label))

    listed = {c.case_id for c in cases} | {p.case_id for p in problems}
    for folder in ("imagesTr", "labelsTr"):
        for case_id, path in _entries(root / folder).items():
            if case_id not in listed:
                problems.append(Problem(case_id, path, "not listed as a training pair in dataset.json"))
    return Dataset(root, str(meta.get("name", root.name)), modality, labels, dimensions, cases, problems)


MSD_PARTS = ("dataset.json", "imagesTr", "labelsTr", "imagesTs")


def layout_parts(root: Path, config: DataConfig | None = None) -> tuple[str, ...]:
    """What a dataset consists of: the MSD files and folders, or the images and labels folders;
    raises DatasetError for a folder that is neither."""
    config = config or DataConfig()
    if (root / "dataset.json").is_file():
        return MSD_PARTS
    if (root / config.images_folder).is_dir():
        return (config.images_folder, config.labels_folder)
    raise DatasetError(
        f"{root}: neither the MSD layout (dataset.json, imagesTr/, labelsTr/) nor {config.images_folder}/ and {config.labels_folder}/ folders"
    )


def read_dataset(root: Path | str, config: DataConfig | None = None) -> Dataset:
    root = Path(root).resolve()
    if layout_parts(root, config) == MSD_PARTS:
        dataset = _read_msd(root)
    else:
        dataset = _read_folders(root, config or DataConfig())
    if 0 not in dataset.labels:
        raise DatasetError(f"{root}: the labels must declare 0 as background")
    return dataset
