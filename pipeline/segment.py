"""``medseg segment``: label a user's volumes with a trained model, on each input's own grid.

Inputs are NIfTI, NRRD or MetaImage files, folders of them, or DICOM series folders. A file
gives a label map of the same name and format; a DICOM series gives ``<folder>.nii.gz``, or
(``output_format``) a DICOM SEG ``<folder>.dcm`` that references it, or both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from pipeline.dicom.seg import write_segmentation
from pipeline.errors import InputError, MedsegError
from pipeline.files import atomic_path
from pipeline.inference import PROBABILITY_SCALE, predict, predict_with_probabilities
from pipeline.model import load_model
from pipeline.volumes import FILE_SUFFIXES, NIFTI_SUFFIXES, Series, choose_series, is_nifti, read_image, to_metatensor

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


def write_label_map(labels: np.ndarray, source: Source, reference: sitk.Image, path: Path) -> None:
    """NIfTI input: the input's own header; any other input: its geometry, through SimpleITK."""
    with atomic_path(path) as tmp:
        if is_nifti(source.path):
            original = nib.load(source.path)
            header = original.header.copy()
            header.set_data_dtype(np.uint8)
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


def _check_format(sources: list[Source], output_format: str) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"--format {output_format}: choose one of {', '.join(OUTPUT_FORMATS)}")
    not_dicom = [str(s.path) for s in sources if s.dicom is None]
    if output_format != "nifti" and not_dicom:
        raise InputError(
            f"--format {output_format}: a DICOM SEG references the DICOM series it segments, and these inputs"
            f" are not DICOM series: {', '.join(not_dicom)} (segment them with --format nifti)"
        )


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
    _check_format(sources, output_format)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(model_path).startswith(("models:/", "runs:/")):  # the file itself: a SEG names its weights' hash
        from pipeline.tracking.registry import download_model_file

        model_path = download_model_file(str(model_path))
    network, description = load_model(model_path, device)
    failures: list[tuple[Path, str]] = []
    for source in tqdm(sources, desc="segmenting", unit="volume"):
        try:
            reference = read_image(source.path, source.series)
            image = to_metatensor(reference)
            if probabilities:
                classes, class_probabilities = predict_with_probabilities(network, description, image, device, tta)
            else:
                classes, class_probabilities = predict(network, description, image, device, tta), None
            del image
            labels = np.asarray(description["label_values"], dtype=np.uint8)[classes]
        except MedsegError as err:
            failures.append((source.path, str(err)))
            continue
        if class_probabilities is not None:
            write_probabilities(class_probabilities, source, reference, probabilities_path(source, out_dir))
        if output_format in ("nifti", "both"):
            write_label_map(labels, source, reference, Path(out_dir) / source.output_name)
        if output_format in ("dicom-seg", "both"):
            seg_path = Path(out_dir) / source.output_name.replace(".nii.gz", ".dcm")
            try:
                write_segmentation(classes, source.dicom, description, model_path, seg_path)
            except MedsegError as err:
                failures.append((source.path, str(err)))
    return failures
