"""``medseg segment``: label a user's volumes with a trained model, on each input's own grid.

Inputs are NIfTI, NRRD or MetaImage files, folders of them, or DICOM series folders. A file
gives a label map of the same name and format; a DICOM series gives ``<folder>.nii.gz``, or
(``output_format``) a DICOM SEG ``<folder>.dcm`` that references it, or both.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from pipeline.data.volumes import (
    FILE_SUFFIXES,
    NIFTI_SUFFIXES,
    Series,
    choose_series,
    is_nifti,
    read_image,
    to_metatensor,
)
from pipeline.dicom.seg import write_segmentation
from pipeline.errors import InputError, MedsegError
from pipeline.files import atomic_path
from pipeline.inference.predictor import PROBABILITY_SCALE, predict
from pipeline.networks.description import ModelDescription
from pipeline.networks.model import load_model

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")


@dataclass(frozen=True)
class Source:
    path: Path
    output_name: str
    series: str | None = None
    dicom: Series | None = None  # the series chosen, where the input is a DICOM folder


def _files_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(FILE_SUFFIXES)
    )


def find_sources(inputs: list[Path], series: str | None = None) -> list[Source]:
    """Files as given; the image files inside a folder; or, where a folder holds none, its DICOM series."""
    sources: list[Source] = []
    for path in map(Path, inputs):
        if path.is_file():
            if not path.name.lower().endswith(FILE_SUFFIXES):
                raise InputError(
                    f"{path}: not a supported image file ({', '.join(FILE_SUFFIXES)}), nor a DICOM series folder"
                )
            sources.append(Source(path, path.name))
        elif path.is_dir() and _files_in(path):
            sources += [Source(p, p.name) for p in _files_in(path)]
        elif path.is_dir():
            chosen = choose_series(path, series)
            suffix = f"_{chosen.description or chosen.index}" if series is not None else ""
            sources.append(Source(path, f"{path.name}{suffix}.nii.gz".replace(" ", "_"), series, chosen))
        else:
            raise InputError(f"{path}: no such file or folder")
    return sources


def label_dtype(label_values: list[int]) -> np.dtype:
    """The smallest integer type that holds every label value: uint8 for the usual 0..K-1, wider (or signed)
    where the training data used values that uint8 would wrap."""
    low, high = min(label_values), max(label_values)
    types = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64)
    return next(np.dtype(t) for t in types if np.iinfo(t).min <= low and high <= np.iinfo(t).max)


def write_label_map(labels: np.ndarray, source: Source, reference: sitk.Image, path: Path) -> None:
    """NIfTI input: the input's own header; any other input: its geometry, through SimpleITK. Stored in
    ``labels``' own integer type."""
    with atomic_path(path) as tmp:
        if is_nifti(source.path):
            original = nib.load(source.path)
            header = original.header.copy()
            header.set_data_dtype(labels.dtype)
            header.set_slope_inter(1, 0)
            image = nib.Nifti1Image(labels, original.affine, header)
            image.header.set_intent("label")
            nib.save(image, tmp)
        else:
            result = sitk.GetImageFromArray(np.ascontiguousarray(labels.T))
            result.CopyInformation(reference)
            sitk.WriteImage(result, str(tmp), useCompression=True)


def probabilities_path(source: Source, out_dir: Path) -> Path:
    """``case.nii.gz`` gives ``case_probabilities.nii.gz``; any other input NRRD (``case_probabilities.nrrd``)."""
    name = source.output_name
    suffix = next((s for s in NIFTI_SUFFIXES if name.endswith(s)), "." + name.rsplit(".", 1)[-1])
    return Path(out_dir) / f"{name[: -len(suffix)]}_probabilities{suffix if is_nifti(source.path) else '.nrrd'}"


def write_probabilities(probabilities: np.ndarray, source: Source, reference: sitk.Image, path: Path) -> None:
    """(class, *shape) uint8 maps, probability x 255, as one file on the input's grid: a NIfTI input gives
    a 4D NIfTI with the input's header (last axis the class; scl_slope 1/255, so readers that apply it get
    probabilities), any other input an NRRD of vector pixels (one component per class) with its geometry."""
    with atomic_path(path) as tmp:
        if is_nifti(source.path):
            original = nib.load(source.path)
            header = original.header.copy()
            header.set_data_dtype(np.uint8)
            image = nib.Nifti1Image(np.moveaxis(probabilities, 0, -1), original.affine, header)
            image.header.set_slope_inter(1 / PROBABILITY_SCALE, 0)  # after construction, which resets scaling
            nib.save(image, tmp)
        else:
            result = sitk.GetImageFromArray(probabilities.T, isVector=True)  # (z, y, x, class)
            result.CopyInformation(reference)
            sitk.WriteImage(result, str(tmp), useCompression=True)


def check_format(sources: list[Source], output_format: str) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"--format {output_format}: choose one of {', '.join(OUTPUT_FORMATS)}")
    not_dicom = [str(s.path) for s in sources if s.dicom is None]
    if output_format != "nifti" and not_dicom:
        raise InputError(
            f"--format {output_format}: a DICOM SEG references the DICOM series it segments, and these inputs"
            f" are not DICOM series: {', '.join(not_dicom)} (segment them with --format nifti)"
        )


@dataclass(frozen=True)
class LoadedModel:
    network: torch.nn.Module
    description: ModelDescription
    device: torch.device
    path: Path  # the file itself, never an MLflow URI: a SEG names its weights' hash


def open_model(model_path: Path | str) -> LoadedModel:
    """The model on this process's device (CUDA when there is one)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, description = load_model(model_path, device)
    return LoadedModel(network, description, device, Path(model_path))


def seg_path(source: Source, out_dir: Path) -> Path:
    return Path(out_dir) / source.output_name.replace(".nii.gz", ".dcm")


def output_paths(
    source: Source, out_dir: Path, output_format: str = "nifti", probabilities: bool = False
) -> list[Path]:
    """The files that segmenting ``source`` writes, in the order ``segment_case`` writes them."""
    paths = [probabilities_path(source, out_dir)] if probabilities else []
    if output_format in ("nifti", "both"):
        paths.append(Path(out_dir) / source.output_name)
    if output_format in ("dicom-seg", "both"):
        paths.append(seg_path(source, out_dir))
    return paths


def segment_case(
    source: Source,
    out_dir: Path,
    model: LoadedModel,
    output_format: str = "nifti",
    tta: bool = False,
    probabilities: bool = False,
    network_lock: AbstractContextManager | None = None,
) -> list[Path]:
    """Segment one input with a loaded model and write its files (``output_paths``); raises MedsegError for an
    input that cannot be segmented. ``network_lock`` is held while the network runs, so that a worker segmenting
    two cases at once reads, prepares, resamples and writes one while the network runs on the other."""
    reference = read_image(source.path, source.series)
    image = to_metatensor(reference)
    classes, class_probabilities = predict(
        model.network, model.description, image, model.device, tta, network_lock, probabilities=probabilities
    )
    del image
    label_values = model.description.label_values
    if class_probabilities is not None:
        write_probabilities(class_probabilities, source, reference, probabilities_path(source, out_dir))
    if output_format in ("nifti", "both"):
        labels = np.asarray(label_values, dtype=label_dtype(label_values))[classes]
        write_label_map(labels, source, reference, Path(out_dir) / source.output_name)
    if output_format in ("dicom-seg", "both"):
        write_segmentation(classes, source.dicom, model.description, model.path, seg_path(source, out_dir))
    return output_paths(source, out_dir, output_format, probabilities)


def segment(
    inputs: list[Path],
    out_dir: Path,
    model_path: Path,
    series: str | None = None,
    output_format: str = "nifti",
    tta: bool = False,
    probabilities: bool = False,
) -> list[tuple[Path, str]]:
    """Segment every input; returns the inputs that failed, each with its reason.
    Labels are written with the values the training data used (which need not be 0..K-1); a SEG's
    segment numbers are the class indices 1..K-1 (DICOM numbers segments from 1). ``tta``: mirroring
    test-time augmentation; ``probabilities``: also write the class probabilities (``write_probabilities``)."""
    sources = find_sources(inputs, series)
    check_format(sources, output_format)
    model = open_model(model_path)
    failures: list[tuple[Path, str]] = []
    for source in tqdm(sources, desc="segmenting", unit="volume"):
        try:
            segment_case(source, out_dir, model, output_format, tta, probabilities)
        except MedsegError as err:
            failures.append((source.path, str(err)))
    return failures
