"""DICOM Segmentation objects (highdicom): a label map written as a SEG that references its source series,
and any SEG (ours, dcmqi's, Slicer's) read back as a label map on its source's grid.

A SEG holds one segment per foreground class; segment number k is the model's class index k, so a label map
read back from it has the class indices as values.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage, generate_uid

from pipeline import __version__
from pipeline.data.volumes import Series, choose_series, find_series, read_series
from pipeline.dicom.codes import property_codes
from pipeline.dicom.sources import instance_uid, read_header, read_sources
from pipeline.errors import InputError
from pipeline.files import atomic_path
from pipeline.networks.description import ModelDescription
from pipeline.networks.model import BUNDLE_WEIGHTS

log = logging.getLogger(__name__)

OVERLAP_RULES = ("refuse", "highest")
SEGMENTATION_CLASSES = (SegmentationStorage, "1.2.840.10008.5.1.4.1.1.66.7")  # binary/fractional, label map
SERIES_NUMBER_OFFSET = 1000  # the SEG's series number: its source's plus this, so viewers list it after
LO = 64  # the longest Long String (LO) DICOM allows


def algorithm(description: ModelDescription, model_path: Path) -> hd.AlgorithmIdentificationSequence:
    """The model as DICOM identifies an algorithm: its name, its version (the training code's commit and
    MLflow run where the model file records them) and the file's SHA-256, so a SEG leads back to its model."""
    provenance = description.provenance or {}
    labels = ", ".join(name for index, name in sorted(description.labels.items(), key=lambda i: int(i[0]))[1:])
    name = f"medseg {description.network.name} {description.modality}: {labels}"
    commit, run = provenance.get("git_commit"), provenance.get("mlflow_run_id")
    version = " ".join(filter(None, [f"git {commit[:12]}" if commit else "", f"run {run}" if run else ""]))
    weights = model_path / BUNDLE_WEIGHTS if model_path.is_dir() else model_path  # a bundle folder: its weights
    parameters = {"model_file": model_path.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    if provenance.get("epochs") is not None:
        parameters["epochs"] = str(provenance["epochs"])
    return hd.AlgorithmIdentificationSequence(
        name=name[:LO],
        family=codes.cid7162.ArtificialIntelligence,
        version=(version or f"medseg {__version__}, no training provenance")[:LO],
        parameters=parameters,
    )


def segment_descriptions(
    description: ModelDescription, identification: hd.AlgorithmIdentificationSequence
) -> list[hd.seg.SegmentDescription]:
    """Segment k for class k (1..K-1; class 0 is the background), named and coded from the model's labels."""
    segments = []
    for index in range(1, len(description.labels)):
        label = description.labels[str(index)]
        category, kind = property_codes(label)
        segments.append(
            hd.seg.SegmentDescription(
                segment_number=index,
                segment_label=label[:LO],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=identification,
                tracking_uid=generate_uid(),
                tracking_id=f"medseg {label}"[:LO],
            )
        )
    return segments


def write_segmentation(
    classes: np.ndarray, series: Series, description: ModelDescription, model_path: Path, path: Path
) -> None:
    """Write ``classes`` (class indices, indexed x, y, slice like the volume read from ``series``) as a binary
    SEG. Frame k is the slice of ``series.files[k]``, as SimpleITK stacks them; each frame carries its source
    file's position and a reference to its SOP instance."""
    sources = read_sources(series.files)
    first = sources.datasets[0]
    if classes.shape != (first.Columns, first.Rows, len(sources.datasets)):
        raise InputError(
            f"{Path(series.files[0]).parent}: label map of shape {classes.shape} does not fit the series'"
            f" {first.Columns}x{first.Rows}x{len(sources.datasets)} slices"
        )
    identification = algorithm(description, Path(model_path))
    notes = sources.summary()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        warnings.filterwarnings("ignore", message=".*omit_empty_frames")  # an empty result: all frames kept
        try:
            seg = hd.seg.Segmentation(
                source_images=sources.datasets,
                pixel_array=np.ascontiguousarray(classes.transpose(2, 1, 0)),  # frames x rows x columns
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=segment_descriptions(description, identification),
                series_instance_uid=generate_uid(),
                series_number=int(first.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET,
                sop_instance_uid=generate_uid(),
                instance_number=1,
                manufacturer="medseg",
                manufacturer_model_name="medseg",
                software_versions=__version__,
                device_serial_number="none",
                content_label="MEDSEG",
                content_description=(notes or "medseg automatic segmentation")[:LO],
                series_description=f"medseg {first.get('SeriesDescription', '')}".strip()[:LO],
            )
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            raise InputError(
                f"{Path(series.files[0]).parent}: cannot write a DICOM SEG for this series: {err}"
            ) from None
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    if notes:
        log.warning("%s: %s (recorded in its ContentDescription)", path, notes)


def is_segmentation(path: Path) -> bool:
    """Whether ``path`` is a DICOM SEG file (read up to its SOP Class UID only)."""
    if not Path(path).is_file():
        return False
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError):
        return False
    return header.get("SOPClassUID") in SEGMENTATION_CLASSES


def read_segmentation(
    path: Path, reference: Path | None = None, series: str | None = None, overlap: str = "refuse"
) -> sitk.Image:
    """The SEG's segments as one label map (value = segment number) on its source series' grid: the series
    in ``reference`` (a folder; ``series`` chooses where it holds several), else the series it references if
    found beside it, else the SEG's own frame geometry. Where segments overlap, ``overlap='refuse'`` raises
    and ``overlap='highest'`` gives each voxel the highest of its segment numbers."""
    path = Path(path)
    if overlap not in OVERLAP_RULES:
        raise InputError(f"--overlap {overlap}: choose one of {', '.join(OVERLAP_RULES)}")
    try:
        seg = hd.seg.segread(path)
        volume = seg.get_volume(combine_segments=True, skip_overlap_checks=overlap == "highest")
    except RuntimeError as err:
        if "overlap" in str(err):
            raise InputError(
                f"{path}: its segments overlap, so one label map cannot hold them; --overlap highest gives each"
                " voxel the highest segment number it belongs to"
            ) from None
        raise InputError(f"{path}: cannot place its frames in a volume: {err}") from None
    except (ValueError, AttributeError, KeyError) as err:
        raise InputError(f"{path}: not a usable DICOM SEG: {err}") from None
    labels = _image(volume)
    folder, source = _reference_series(seg, path, reference, series)
    if source is None:
        log.info("%s: no source series given or found beside it; written on the SEG's own frame geometry", path)
        return labels
    grid = read_series(folder, source)
    frame_of_reference = read_header(source.files[0]).get("FrameOfReferenceUID")
    if frame_of_reference and frame_of_reference != seg.FrameOfReferenceUID:
        raise InputError(
            f"{path}: its frame of reference {seg.FrameOfReferenceUID} is not that of the series in {folder}"
            f" ({frame_of_reference}): they are not in the same space"
        )
    if not _aligned(labels, grid):
        log.warning(
            "%s: its frames are not on the grid of the series in %s; resampled (nearest neighbour)", path, folder
        )
    return sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def _image(volume: hd.Volume) -> sitk.Image:
    """A highdicom volume (slices x rows x columns, affine in LPS) as a SimpleITK image (x = column), its slices
    ordered along the normal of the rows and columns, as a DICOM series is read."""
    affine = np.asarray(volume.affine)
    array, origin, steps = volume.array, affine[:3, 3], affine[:3, [2, 1, 0]].copy()  # ITK's x, y, z steps
    if np.dot(np.cross(steps[:, 0], steps[:, 1]), steps[:, 2]) < 0:
        array, origin = array[::-1], origin + (array.shape[0] - 1) * steps[:, 2]
        steps[:, 2] *= -1
    spacing = np.linalg.norm(steps, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((steps / spacing).ravel().tolist())
    image.SetOrigin(origin.tolist())
    return image


def _aligned(image: sitk.Image, grid: sitk.Image) -> bool:
    """Whether every voxel centre of ``image`` is a voxel centre of ``grid`` (then resampling moves nothing),
    whichever way each image orders its axes."""

    def voxel_to_mm(img: sitk.Image) -> np.ndarray:
        return np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())

    steps = np.linalg.solve(voxel_to_mm(grid), voxel_to_mm(image))  # image's voxel steps in grid voxels
    origin = np.array(grid.TransformPhysicalPointToContinuousIndex(image.GetOrigin()))
    return bool(
        np.allclose(steps, np.round(steps), atol=1e-3)
        and round(abs(np.linalg.det(steps))) == 1
        and np.allclose(origin, np.round(origin), atol=1e-3)
    )


def _reference_series(seg: hd.seg.Segmentation, path: Path, reference: Path | None, choice: str | None):
    """(folder, series) of the SEG's source: chosen in ``reference``, or the one there (or beside the SEG)
    whose instances the SEG references; (None, None) where none is found beside it."""
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in seg.get("ReferencedSeriesSequence", [])
        for item in series.get("ReferencedInstanceSequence", [])
    }
    folder = Path(reference) if reference is not None else path.parent
    if reference is not None and choice is not None:
        return folder, choose_series(folder, choice)
    candidates = [s for s in find_series(folder) if path.resolve() not in {Path(f).resolve() for f in s.files}]
    matching = [s for s in candidates if referenced & {instance_uid(read_header(f)) for f in s.files}]
    if len(matching) == 1:
        return folder, matching[0]
    if reference is None:
        return None, None
    if not matching and len(candidates) == 1:
        log.warning("%s: references none of the instances in %s; placed on that series by position", path, folder)
        return folder, candidates[0]
    listing = "\n  ".join(s.summary() for s in candidates) or "(no DICOM series)"
    raise InputError(
        f"{path}: {len(matching)} series in {reference} hold the instances it references; choose one with"
        f" --series:\n  {listing}"
    )


def convert_segmentation(
    path: Path, target: Path, reference: Path | None = None, series: str | None = None, overlap: str = "refuse"
) -> sitk.Image:
    """``medseg convert SEG.dcm labels.nii.gz``: the SEG as a label map, in the format ``target``'s suffix names."""
    labels = read_segmentation(path, reference, series, overlap)
    with atomic_path(target) as tmp:
        sitk.WriteImage(labels, str(tmp), useCompression=True)
    return labels
