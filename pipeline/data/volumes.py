"""Reading the formats users bring (NIfTI, NRRD, MetaImage, DICOM series, PNG/TIFF) with SimpleITK.

Everything downstream works on NIfTI: other inputs are converted at the boundary with their
geometry intact, and results are written back onto the source's own grid.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from pipeline.errors import InputError
from pipeline.files import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
FILE_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff")
MAX_VOXELS = 2**31  # a header claiming more is refused before anything is allocated
SLICE_GAP_TOLERANCE_MM = 0.01

sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM's warnings are reported as our own, with the file


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def strip_suffix(path: Path) -> str:
    """The case name: 'case_001' for 'case_001.nii.gz'; a DICOM folder keeps its name."""
    for suffix in FILE_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


@dataclass(frozen=True)
class Series:
    """One DICOM series: the files of one SeriesInstanceUID (or of one folder, where UIDs are empty)."""

    index: int
    uid: str
    description: str
    files: tuple[str, ...]
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    slice_gaps: tuple[float, ...]

    @property
    def uniform(self) -> bool:
        return not self.slice_gaps or max(self.slice_gaps) - min(self.slice_gaps) <= SLICE_GAP_TOLERANCE_MM

    def summary(self) -> str:
        size = "x".join(map(str, self.size))
        spacing = "x".join(f"{s:.3g}" for s in self.spacing)
        note = (
            "" if self.uniform else f", non-uniform slice gaps {min(self.slice_gaps):.3g}-{max(self.slice_gaps):.3g} mm"
        )
        return f"[{self.index}] {self.description or '(no description)'}: {size} voxels, {spacing} mm, uid {self.uid or '(empty)'}{note}"


def _header(file: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    reader.ReadImageInformation()
    return reader


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _describe_series(index: int, uid: str, files: list[str]) -> Series:
    headers = [_header(f) for f in files]
    first = headers[0]
    positions = [
        np.array([float(v) for v in _tag(h, "0020|0032").split("\\")]) for h in headers if _tag(h, "0020|0032")
    ]
    gaps: tuple[float, ...] = ()
    if len(positions) == len(files) > 1:
        direction = np.array(first.GetDirection()).reshape(3, 3)
        along_normal = sorted(float(p @ direction[:, 2]) for p in positions)
        gaps = tuple(float(b - a) for a, b in zip(along_normal, along_normal[1:]))
    columns, rows = first.GetSize()[:2]
    spacing_z = float(np.median(gaps)) if gaps else first.GetSpacing()[2]
    return Series(
        index=index,
        uid=uid,
        description=_tag(first, "0008|103e"),
        files=tuple(files),
        size=(columns, rows, len(files)),
        spacing=(first.GetSpacing()[0], first.GetSpacing()[1], spacing_z),
        slice_gaps=gaps,
    )


def find_series(folder: Path) -> list[Series]:
    """Every DICOM series under ``folder`` (files with or without extension), in a stable order."""
    found = []
    for directory, _, _ in sorted(os.walk(folder)):
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory):
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid)
            if files:
                found.append((uid, list(files)))
    return [_describe_series(i, uid, files) for i, (uid, files) in enumerate(found)]


def choose_series(folder: Path, choice: str | None = None) -> Series:
    """The one series in ``folder``, or the one named by index, UID or description."""
    series = find_series(folder)
    if not series:
        raise InputError(f"{folder}: no DICOM series found")
    if choice is None and len(series) == 1:
        return series[0]
    listing = "\n  ".join(s.summary() for s in series)
    if choice is None:
        raise InputError(
            f"{folder}: holds {len(series)} series; choose one with --series INDEX|UID|DESCRIPTION:\n  {listing}"
        )
    matches = [s for s in series if choice in (str(s.index), s.uid) or choice.lower() == s.description.lower()]
    if not matches:  # then a unique part of a description will do
        matches = [s for s in series if choice.lower() in s.description.lower()]
    if len(matches) != 1:
        raise InputError(f"{folder}: --series '{choice}' matches {len(matches)} series of:\n  {listing}")
    return matches[0]


def read_image(path: Path, series: str | None = None) -> sitk.Image:
    """A file of any supported format, or a DICOM series folder; raises InputError naming the file."""
    path = Path(path)
    if path.is_dir():
        return read_series(path, choose_series(path, series))
    check_header(path)
    try:
        return _read_nifti(path) if is_nifti(path) else sitk.ReadImage(str(path))
    except (RuntimeError, OSError, EOFError, ValueError, zlib.error) as err:
        raise InputError(f"{path}: truncated or corrupt image data ({_first_line(err)})") from None


def read_series(folder: Path, series: Series) -> sitk.Image:
    """The volume of one series found in ``folder``."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise InputError(
            f"{folder}: cannot read DICOM series {series.uid or '(empty uid)'}: {_first_line(err)}"
        ) from None


def _read_nifti(path: Path) -> sitk.Image:
    """NIfTI through nibabel: ITK silently zero-fills short files and turns NaN into 0."""
    volume = nib.load(path)
    array = np.asanyarray(volume.dataobj)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.T))
    if array.ndim == 3:
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        image.SetSpacing(spacing.tolist())
        image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
        image.SetOrigin(lps[:3, 3].tolist())
    return image


def check_header(path: Path) -> None:
    """Refuse empty files, non-images and headers that claim an absurd size, before reading pixels."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    not_an_image = InputError(f"{path}: not an image in a supported format ({', '.join(FILE_SUFFIXES)}, DICOM)")
    try:
        if is_nifti(path):
            size = nib.load(path).shape
        else:
            header = _header(str(path))
            size = (*header.GetSize(), header.GetNumberOfComponents())
    except (RuntimeError, OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError):
        raise not_an_image from None
    if int(np.prod(size, dtype=np.int64)) > MAX_VOXELS:
        raise InputError(f"{path}: header claims {'x'.join(map(str, size))} voxels, too large to be real")


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else err.__class__.__name__


def to_metatensor(image: sitk.Image) -> MetaTensor:
    """Channel-first float32 tensor indexed (x, y[, z]) as NIfTI arrays are, with its RAS affine (as MONAI's ITKReader makes)."""
    dimension = image.GetDimension()
    array = sitk.GetArrayFromImage(image).astype(np.float32).T
    if image.GetNumberOfComponentsPerPixel() > 1:  # vector pixels come first after the transpose
        array = np.moveaxis(array, 0, -1)
    affine = np.eye(dimension + 1)
    affine[:dimension, :dimension] = np.array(image.GetDirection()).reshape(dimension, dimension) @ np.diag(
        image.GetSpacing()
    )
    affine[:dimension, dimension] = image.GetOrigin()
    lps_to_ras = np.diag([-1.0, -1.0] + [1.0] * (dimension - 1))
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array))[None], affine=torch.as_tensor(lps_to_ras @ affine))


def convert(source: Path, target: Path, series: str | None = None) -> sitk.Image:
    """Any supported input (a DICOM series included) to NIfTI, or another format by ``target``'s suffix."""
    image = read_image(source, series)
    with atomic_path(target) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return image
