"""``medseg segment``: label a user's volumes with a trained model, on each input's own grid."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from pipeline.dataset import NIFTI_SUFFIXES
from pipeline.errors import InputError
from pipeline.files import atomic_path
from pipeline.inference import predict_file
from pipeline.model import load_model

log = logging.getLogger(__name__)


def input_files(inputs: list[Path]) -> list[Path]:
    """Files as given, and the NIfTI files inside each folder given."""
    files: list[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
            if not found:
                raise InputError(f"{path}: folder holds no NIfTI file (.nii, .nii.gz)")
            files += found
        elif path.is_file():
            if not path.name.endswith(NIFTI_SUFFIXES):
                raise InputError(f"{path}: not a NIfTI file (.nii, .nii.gz); other formats are not read yet")
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return files


def write_label_map(labels: np.ndarray, source: nib.Nifti1Image, path: Path) -> None:
    """Save with the source's affine and header, so the result overlays the input exactly."""
    header = source.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    image = nib.Nifti1Image(labels, source.affine, header)
    image.header.set_intent("label")
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def segment(inputs: list[Path], out_dir: Path, model_path: Path) -> list[tuple[Path, str]]:
    """Segment every input; returns the inputs that failed, each with its reason."""
    files = input_files(inputs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, description = load_model(model_path, device)
    failures: list[tuple[Path, str]] = []
    for path in tqdm(files, desc="segmenting", unit="volume"):
        try:
            source = nib.load(path)
            labels = predict_file(network, description, path, device)
        except Exception as err:  # one unreadable input must not stop the others
            failures.append((path, f"{err.__class__.__name__}: {err}"))
            continue
        if labels.shape != source.shape[:3]:
            failures.append((path, f"prediction shape {labels.shape} does not match input shape {source.shape}"))
            continue
        write_label_map(labels, source, Path(out_dir) / path.name)
    return failures
