"""Reading a dataset in the Medical Segmentation Decathlon layout.

``dataset.json`` declares the labels and modality and lists the training pairs;
files in ``imagesTr/`` or ``labelsTr/`` that it does not pair are reported, not used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import DatasetError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


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
    cases: list[Case]
    problems: list[Problem] = field(default_factory=list)


def case_id_of(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _volume_files(folder: Path) -> dict[str, Path]:
    """Image files by case id; hidden files (macOS ``._*`` forks in the MSD tarballs) are skipped."""
    if not folder.is_dir():
        return {}
    return {
        case_id_of(p): p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_SUFFIXES)
    }


def _resolve_inside(root: Path, entry: str, what: str) -> Path:
    path = (root / entry).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DatasetError(f"{root / 'dataset.json'}: {what} '{entry}' points outside the dataset folder")
    return path


def read_dataset(root: Path | str) -> Dataset:
    root = Path(root)
    descriptor = root / "dataset.json"
    if not descriptor.is_file():
        raise DatasetError(f"{root}: no dataset.json; expected the MSD layout (imagesTr/, labelsTr/, dataset.json)")
    try:
        meta = json.loads(descriptor.read_text())
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
        modality = str(meta.get("modality", {}).get("0", "unknown"))
        entries = meta["training"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise DatasetError(f"{descriptor}: not a valid MSD dataset.json ({type(err).__name__}: {err})") from None
    if 0 not in labels:
        raise DatasetError(f"{descriptor}: 'labels' must declare 0 as background")

    cases: list[Case] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for entry in entries:
        image = _resolve_inside(root, entry["image"], "image")
        label = _resolve_inside(root, entry["label"], "label")
        case_id = case_id_of(image)
        if case_id in seen:
            problems.append(Problem(case_id, descriptor, f"case '{case_id}' is listed twice in dataset.json"))
            continue
        seen.add(case_id)
        missing = [p for p in (image, label) if not p.is_file()]
        if missing:
            problems.append(Problem(case_id, missing[0], "listed in dataset.json but the file does not exist"))
            continue
        cases.append(Case(case_id, image, label))

    listed = {c.image.resolve() for c in cases} | {c.label.resolve() for c in cases}
    for folder in ("imagesTr", "labelsTr"):
        for case_id, path in _volume_files(root / folder).items():
            if path.resolve() not in listed and case_id not in seen:
                problems.append(Problem(case_id, path, "not listed as a training pair in dataset.json"))
    return Dataset(root, str(meta.get("name", root.name)), modality, labels, cases, problems)
