"""The source instances of a segmentation: their metadata, with the UIDs a SEG must reference made usable.

Real series lack UIDs (an anonymiser that blanked them) or repeat them. A SEG needs a study, a series and
one SOP instance per referenced image; what is missing is taken from the file meta information where the
file has it, else generated, and each repair is reported so the SEG can say what it did.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from pipeline.errors import InputError

log = logging.getLogger(__name__)

# Patient and study attributes a SEG copies from its source; DICOM lets them be empty, not absent
COPIED_ATTRIBUTES = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@dataclass
class SourceInstances:
    """The metadata (no pixel data) of a series' files, in the order of the volume's slices."""

    datasets: list[Dataset]
    repairs: list[str] = field(default_factory=list)  # short, for the SEG's ContentDescription

    def summary(self) -> str:
        return "; ".join(self.repairs)


def instance_uid(dataset: Dataset) -> str:
    """The SOP Instance UID, or, where the dataset's own is empty, the one its file meta information names."""
    meta = getattr(dataset, "file_meta", None)
    return dataset.get("SOPInstanceUID") or (meta.get("MediaStorageSOPInstanceUID", "") if meta else "")


def read_header(file: str | Path) -> Dataset:
    try:
        return pydicom.dcmread(file, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError) as err:
        raise InputError(f"{file}: not a readable DICOM file ({err})") from None


def read_sources(files: list[str] | tuple[str, ...]) -> SourceInstances:
    """Headers of ``files`` (pixel data is not decoded, so any transfer syntax will do), repaired where a
    UID is empty. Generated study and series UIDs derive from the instances, so the same series always
    gets the same ones and every SEG made from it lands in one study."""
    datasets = [read_header(f) for f in files]
    sources = SourceInstances(datasets)
    for dataset in datasets:
        if "SpecificCharacterSet" in dataset and not dataset.SpecificCharacterSet:
            del dataset.SpecificCharacterSet  # empty means the default repertoire; highdicom refuses ''
        for keyword in COPIED_ATTRIBUTES:
            if keyword not in dataset:
                setattr(dataset, keyword, "")
    _fill_instance_uids(sources, files)
    _fill_shared_uid(sources, "StudyInstanceUID", "Study")
    _fill_shared_uid(sources, "SeriesInstanceUID", "Series")
    repeated = [uid for uid, n in Counter(d.SOPInstanceUID for d in datasets).items() if n > 1]
    if repeated:
        log.warning(
            "%s: %d SOP Instance UIDs are shared by several files (e.g. %s); the SEG references them as they are,"
            " with each frame's own position",
            Path(files[0]).parent,
            len(repeated),
            repeated[0],
        )
        sources.repairs.append("repeated SOP UIDs kept")
    return sources


def _fill_instance_uids(sources: SourceInstances, files) -> None:
    from_meta = generated = 0
    for dataset, file in zip(sources.datasets, files):
        meta = getattr(dataset, "file_meta", Dataset())
        if not dataset.get("SOPClassUID"):
            dataset.SOPClassUID = meta.get("MediaStorageSOPClassUID") or _refuse(file, "no SOP Class UID")
        if not dataset.get("SOPInstanceUID"):
            from_file_meta = meta.get("MediaStorageSOPInstanceUID")
            dataset.SOPInstanceUID = from_file_meta or generate_uid(entropy_srcs=[str(Path(file).resolve())])
            from_meta, generated = from_meta + bool(from_file_meta), generated + (not from_file_meta)
    if from_meta:
        log.warning(
            "%s: %d files have an empty SOP Instance UID; used their file meta's", Path(files[0]).parent, from_meta
        )
        sources.repairs.append("SOP UIDs from file meta")
    if generated:
        log.warning("%s: %d files have no SOP Instance UID at all; generated", Path(files[0]).parent, generated)
        sources.repairs.append("new SOP UIDs")


def _fill_shared_uid(sources: SourceInstances, keyword: str, name: str) -> None:
    """One value for all instances: theirs where they agree, else the first one given, else a generated one."""
    values = [d.get(keyword, "") for d in sources.datasets]
    given = [v for v in dict.fromkeys(values) if v]
    if len(given) == 1 and all(values):
        return
    folder = Path(sources.datasets[0].filename).parent
    if given:
        chosen = given[0]
        log.warning("%s: %s Instance UIDs differ or are missing in some files; all use %s", folder, name, chosen)
        sources.repairs.append(f"one {name} UID for all")
    else:
        seed = [
            keyword,
            sources.datasets[0].get("FrameOfReferenceUID", ""),
            *(d.SOPInstanceUID for d in sources.datasets),
        ]
        chosen = generate_uid(entropy_srcs=seed)
        log.warning("%s: no %s Instance UID; the SEG uses a generated one, %s", folder, name, chosen)
        sources.repairs.append(f"new {name} UID")
    for dataset in sources.datasets:
        setattr(dataset, keyword, chosen)


def _refuse(file, problem: str):
    raise InputError(f"{file}: {problem}, and its file meta names none either: cannot reference it from a SEG")
