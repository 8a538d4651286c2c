"""DICOM SEG out of `medseg segment` and back in through `medseg convert`, on real series and on SEG objects
made by another tool (dcmqi). Untrained models: the geometry and the UIDs are tested, not the accuracy."""

import hashlib
import logging
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.volumes import choose_series, read_image
from pipeline.dicom.seg import algorithm, read_segmentation, write_segmentation
from pipeline.dicom.sources import read_sources
from pipeline.errors import InputError
from pipeline.inference.segment import segment
from pipeline.networks.model import BUNDLE_WEIGHTS, build_network, describe, load_model, save_model
from tests.conftest import HIPPOCAMPUS_FIXTURE, MRI_PLAN, SHARED, needs_shared

pytestmark = needs_shared

WITH_SEG = SHARED / "dicom" / "ct-3slice-with-seg"
CT_3SLICE = WITH_SEG / "ct-3slice"
J2K_CT = SHARED / "ct-example" / "example_ct_dicom"  # JPEG 2000, empty Study, Series and SOP Instance UIDs
ORGANS = {"0": "background", "1": "liver", "2": "spine", "3": "heart"}
# coarse, and one patch covers the whole volume: an untrained network runs over a 512x512 CT in a second
COARSE_CT_PLAN = {**MRI_PLAN, "spacing": [6.0, 6.0, 3.0], "crop_foreground": False}


def _model(tiny_params, path: Path, labels=ORGANS, plan=COARSE_CT_PLAN, patch=(96, 96, 16), slice_axis=None) -> Path:
    description = describe(tiny_params, labels, "CT", plan, list(patch), slice_axis=slice_axis)
    save_model(path, build_network(description.network), description)
    return path


@pytest.fixture
def organ_model(tiny_params, tmp_path) -> Path:
    return _model(tiny_params, tmp_path / "organs.pt")


def source_uids(folder: Path) -> dict[str, Path]:
    """Every SOP Instance UID of the files in ``folder`` (the file meta's where the dataset's own is empty)."""
    uids = {}
    for file in sorted(folder.iterdir()):
        header = pydicom.dcmread(file, stop_before_pixels=True)
        uids[header.SOPInstanceUID or header.file_meta.MediaStorageSOPInstanceUID] = file
    return uids


def place_frames(seg_path: Path, nifti_path: Path) -> np.ndarray:
    """The SEG's frames put into the NIfTI's voxel grid by each frame's own ImagePositionPatient and the
    shared orientation and spacing (pydicom only, none of the code under test); value = segment number."""
    seg = pydicom.dcmread(seg_path)
    nifti = nib.load(nifti_path)
    lps_to_voxel = np.linalg.inv(nifti.affine) @ np.diag([-1.0, -1.0, 1.0, 1.0])
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = map(float, shared.PixelMeasuresSequence[0].PixelSpacing)
    # one column to the right, one row down, in voxels of the NIfTI: each must be a whole voxel step
    column_step = lps_to_voxel[:3, :3] @ (orientation[:3] * column_spacing)
    row_step = lps_to_voxel[:3, :3] @ (orientation[3:] * row_spacing)
    np.testing.assert_allclose(np.stack([column_step, row_step]), np.round([column_step, row_step]), atol=1e-4)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    placed = np.zeros(nifti.shape, np.uint8)
    for frame, pixels in zip(seg.PerFrameFunctionalGroupsSequence, frames):
        position = np.array([*frame.PlanePositionSequence[0].ImagePositionPatient, 1.0], dtype=float)
        first = (lps_to_voxel @ position)[:3]
        np.testing.assert_allclose(first, np.round(first), atol=1e-3)  # the frame's first pixel is a voxel centre
        rows, columns = np.nonzero(pixels)
        voxels = np.round(first[:, None] + np.outer(column_step, columns) + np.outer(row_step, rows)).astype(int)
        placed[tuple(voxels)] = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
    return placed


def referenced_instances(seg_path: Path) -> tuple[set[str], set[str]]:
    """(instances in the SEG's Referenced Series Sequence, instances its frames are derived from)."""
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    listed = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    derived = {
        image.ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for image in derivation.SourceImageSequence
    }
    return listed, derived


def test_a_ct_series_gives_a_seg_that_references_it_and_places_as_the_nifti(organ_model, tmp_path):
    assert segment([CT_3SLICE], tmp_path, organ_model, output_format="both") == []
    seg_path, nifti_path = tmp_path / "ct-3slice.dcm", tmp_path / "ct-3slice.nii.gz"
    source = pydicom.dcmread(CT_3SLICE / "01.dcm", stop_before_pixels=True)
    seg = hd.seg.segread(seg_path)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [source.SeriesInstanceUID]
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    listed, derived = referenced_instances(seg_path)
    assert listed == set(source_uids(CT_3SLICE)) and derived <= listed
    # one segment per foreground class, named and coded from the model's labels, tracked, with the algorithm
    assert seg.segment_numbers == [1, 2, 3]
    segments = {d.segment_label: d for d in seg.SegmentSequence}
    assert list(segments) == ["liver", "spine", "heart"]
    assert segments["liver"].segmented_property_type.value == "10200004"  # SCT Liver
    assert segments["liver"].segmented_property_category.meaning == "Anatomical Structure"
    assert len({d.tracking_uid for d in segments.values()}) == 3 and segments["heart"].tracking_id == "medseg heart"
    algorithm = segments["spine"].SegmentationAlgorithmIdentificationSequence[0]
    network = torch.load(organ_model, weights_only=True)["network"]["name"]  # planned for the model's CT plan
    assert (
        algorithm.AlgorithmName.startswith(f"medseg {network} CT: liver, spine, heart") and algorithm.AlgorithmVersion
    )
    assert segments["spine"].SegmentAlgorithmType == "AUTOMATIC"
    labels = np.asanyarray(nib.load(nifti_path).dataobj)
    np.testing.assert_array_equal(place_frames(seg_path, nifti_path), labels)
    # and our own reader puts it back on the series' grid
    read_back = read_segmentation(seg_path, reference=CT_3SLICE)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_back).T, labels)


def test_a_real_label_map_written_as_seg_reads_back_voxel_for_voxel(organ_model, tmp_path):
    """The dcmqi reference organ masks (not a random model's output) through our writer and back."""
    masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(WITH_SEG / f"{o}_seg.nrrd"))).T for o in ("liver", "spine")]
    organs = np.zeros(masks[0].shape, np.uint8)
    for number, mask in enumerate(masks, start=1):
        organs[mask > 0] = number
    assert set(np.unique(organs)) == {0, 1, 2}
    series = choose_series(CT_3SLICE)
    write_segmentation(organs, series, load_model(organ_model)[1], organ_model, tmp_path / "organs.dcm")
    read_back = read_segmentation(tmp_path / "organs.dcm", reference=CT_3SLICE)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_back).T, organs)
    grid = read_image(CT_3SLICE)
    assert read_back.GetSize() == grid.GetSize()
    np.testing.assert_allclose(read_back.GetOrigin(), grid.GetOrigin(), atol=1e-4)
    # the empty heart segment is described, and no empty frame is stored
    seg = hd.seg.segread(tmp_path / "organs.dcm")
    assert seg.segment_numbers == [1, 2, 3] and seg.NumberOfFrames == sum(
        int(np.any(organs[:, :, k] == n)) for k in range(3) for n in (1, 2)
    )


def test_the_jpeg2000_ct_without_uids_gives_a_seg_that_says_what_it_generated(organ_model, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert segment([J2K_CT], tmp_path, organ_model, output_format="both") == []
    assert "no Study Instance UID" in caplog.text and "no Series Instance UID" in caplog.text
    seg_path = tmp_path / "example_ct_dicom.dcm"
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    for uid in (seg.StudyInstanceUID, seg.SeriesInstanceUID, seg.ReferencedSeriesSequence[0].SeriesInstanceUID):
        assert uid and pydicom.uid.UID(uid).is_valid
    assert seg.ContentDescription == "SOP UIDs from file meta; new Study UID; new Series UID"
    listed, derived = referenced_instances(seg_path)
    assert listed == set(source_uids(J2K_CT)) and derived <= listed  # the files' own (file meta) UIDs
    np.testing.assert_array_equal(
        place_frames(seg_path, tmp_path / "example_ct_dicom.nii.gz"),
        np.asanyarray(nib.load(tmp_path / "example_ct_dicom.nii.gz").dataobj),
    )
    # generated UIDs are derived from the instances: a second SEG of the series lands in the same study
    again = read_sources(choose_series(J2K_CT).files).datasets[0]
    assert again.StudyInstanceUID == seg.StudyInstanceUID
    assert again.SeriesInstanceUID == seg.ReferencedSeriesSequence[0].SeriesInstanceUID


def test_repeated_instance_uids_are_kept_and_said(organ_model, tmp_path, caplog):
    copy = tmp_path / "dup"
    copy.mkdir()
    first = pydicom.dcmread(CT_3SLICE / "01.dcm").SOPInstanceUID
    for file in sorted(CT_3SLICE.iterdir()):
        dataset = pydicom.dcmread(file)
        dataset.SOPInstanceUID = first
        dataset.save_as(copy / file.name)
    with caplog.at_level(logging.WARNING):
        assert segment([copy], tmp_path / "out", organ_model, output_format="both") == []
    assert "shared by several files" in caplog.text
    seg = pydicom.dcmread(tmp_path / "out" / "dup.dcm")
    assert seg.ContentDescription == "repeated SOP UIDs kept"
    np.testing.assert_array_equal(
        place_frames(tmp_path / "out" / "dup.dcm", tmp_path / "out" / "dup.nii.gz"),
        np.asanyarray(nib.load(tmp_path / "out" / "dup.nii.gz").dataobj),
    )


def test_a_2d_model_segments_a_dicom_series_slice_by_slice_into_a_seg(tiny_params, tmp_path):
    labels = {"0": "background", "1": "Anterior", "2": "Posterior"}
    model = _model(tiny_params, tmp_path / "2d.pt", labels, MRI_PLAN, patch=(64, 64), slice_axis=2)
    study = SHARED / "dicom" / "mr-study"
    assert segment([study], tmp_path / "out", model, series="HippoCrop", output_format="both") == []
    seg_path, nifti_path = tmp_path / "out" / "mr-study_HippoCrop.dcm", tmp_path / "out" / "mr-study_HippoCrop.nii.gz"
    labels_written = np.asanyarray(nib.load(nifti_path).dataobj)
    assert labels_written.shape == (34, 50, 40)
    np.testing.assert_array_equal(place_frames(seg_path, nifti_path), labels_written)
    seg = hd.seg.segread(seg_path)
    # names not in DICOM's segmentation vocabulary get the generic Tissue/Tissue
    assert [d.segmented_property_type.meaning for d in seg.SegmentSequence] == ["Tissue", "Tissue"]
    listed, _ = referenced_instances(seg_path)
    assert listed == {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in choose_series(study, "HippoCrop").files
    }


def test_dicom_seg_of_a_non_dicom_input_is_refused_before_any_work(untrained_model, tmp_path):
    source = HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_177.nii.gz"
    with pytest.raises(InputError, match="hippocampus_177.nii.gz.*--format nifti"):
        segment([source, CT_3SLICE], tmp_path / "out", untrained_model, output_format="dicom-seg")
    with pytest.raises(InputError, match="--format seg: choose one of nifti, dicom-seg, both"):
        segment([CT_3SLICE], tmp_path / "out", untrained_model, output_format="seg")
    assert not (tmp_path / "out").exists()


def test_dcmqi_liver_seg_converts_to_the_liver_mask_voxel_for_voxel(tmp_path):
    result = CliRunner().invoke(app, ["convert", str(WITH_SEG / "liver.dcm"), str(tmp_path / "liver.nii.gz")])
    assert result.exit_code == 0, result.output
    written, reference = (
        sitk.ReadImage(str(tmp_path / "liver.nii.gz")),
        sitk.ReadImage(str(WITH_SEG / "liver_seg.nrrd")),
    )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(reference))
    assert written.GetSize() == reference.GetSize() == (512, 512, 3)
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), atol=1e-5)


def test_a_seg_alone_is_placed_on_its_own_frame_geometry(tmp_path):
    shutil.copy(WITH_SEG / "liver.dcm", tmp_path)
    alone = read_segmentation(tmp_path / "liver.dcm")  # no series beside it: its frames (all 3 slices) make the grid
    reference = sitk.ReadImage(str(WITH_SEG / "liver_seg.nrrd"))
    assert alone.GetSize() == reference.GetSize() == (512, 512, 3)
    np.testing.assert_allclose(alone.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(alone.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(alone), sitk.GetArrayFromImage(reference))


def test_overlapping_segments_are_refused_unless_the_highest_number_is_asked_for(tmp_path):
    overlaps = WITH_SEG / "partial_overlaps.dcm"
    with pytest.raises(InputError, match="segments overlap.*--overlap highest"):
        read_segmentation(overlaps)
    result = CliRunner().invoke(
        app,
        ["convert", str(overlaps), str(tmp_path / "o.nii.gz"), "--overlap", "highest", "--reference", str(CT_3SLICE)],
    )
    assert result.exit_code == 0, result.output
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o.nii.gz")))  # slices x rows x columns
    # each segment alone, from highdicom, ordered like the series (ascending z, as ITK reads it)
    volume = hd.seg.segread(overlaps).get_volume(combine_segments=False)
    assert volume.affine[2, 0] < 0  # its slices run down z
    stacked = volume.array[::-1]
    numbers = np.arange(1, stacked.shape[-1] + 1)
    assert (stacked.sum(-1) > 1).any()  # the file does overlap
    np.testing.assert_array_equal(written, (stacked * numbers).max(-1))


def test_a_bundle_folder_is_identified_by_the_hash_of_its_weights(untrained_model, tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / BUNDLE_WEIGHTS).parent.mkdir(parents=True)
    shutil.copyfile(untrained_model, bundle / BUNDLE_WEIGHTS)
    _, description = load_model(untrained_model)
    parameters = [algorithm(description, path)[0].AlgorithmParameters for path in (bundle, untrained_model)]
    sha256 = hashlib.sha256(untrained_model.read_bytes()).hexdigest()
    assert all(f"sha256={sha256}" in p for p in parameters), parameters
