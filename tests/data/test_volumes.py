"""Reading every accepted format, on the real files in ../shared and on files the tests damage."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.data.volumes import choose_series, convert, find_series, read_image, strip_suffix, to_metatensor
from pipeline.errors import InputError
from tests.conftest import HIPPOCAMPUS_FIXTURE, SHARED, needs_shared, write_volume

CT_DICOM = SHARED / "ct-example" / "example_ct_dicom"
MR_STUDY = SHARED / "dicom" / "mr-study"


def test_strip_suffix_knows_double_suffixes():
    assert strip_suffix(HIPPOCAMPUS_FIXTURE / "a.b.nii.gz") == "a.b"
    assert strip_suffix(HIPPOCAMPUS_FIXTURE / "case.NRRD") == "case"
    assert strip_suffix(HIPPOCAMPUS_FIXTURE / "dicom_folder") == "dicom_folder"


@pytest.mark.parametrize(
    "affine", [np.diag([1.0, 1.0, 1.0, 1.0]), np.diag([-0.8, -0.9, 2.5, 1.0])], ids=["RAS", "LPS-anisotropic"]
)
def test_metatensor_matches_nibabel_array_and_affine(tmp_path, affine):
    affine = affine.copy()
    affine[:3, 3] = [3, -7, 11]
    array = np.random.default_rng(0).integers(-1000, 1000, (7, 5, 4)).astype(np.int16)
    path = write_volume(tmp_path / "signed.nii.gz", array, affine)
    volume = to_metatensor(read_image(path))
    np.testing.assert_array_equal(volume[0].numpy(), array)
    np.testing.assert_allclose(volume.affine.numpy(), nib.load(path).affine, atol=1e-5)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_and_metaimage_keep_their_geometry(tmp_path, suffix):
    source = HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_149.nii.gz"
    target = convert(source, tmp_path / f"case{suffix}")
    again = read_image(tmp_path / f"case{suffix}")
    assert again.GetSize() == target.GetSize() and np.allclose(again.GetOrigin(), target.GetOrigin())
    np.testing.assert_array_equal(to_metatensor(again).numpy(), to_metatensor(read_image(source)).numpy())


def test_broken_files_are_named_with_their_problem(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "text.nii.gz").write_text("not an image")
    write_volume(tmp_path / "whole.nii.gz", np.zeros((64, 64, 64), np.float32))
    complete = gzip.decompress((tmp_path / "whole.nii.gz").read_bytes())
    (tmp_path / "truncated.nii").write_bytes(complete[: len(complete) // 2])
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.float32)
    (tmp_path / "absurd.nii").write_bytes(header.binaryblock + b"\0" * 4)
    expected = {
        "empty.nii.gz": "empty file",
        "text.nii.gz": "not an image in a supported format",
        "truncated.nii": "truncated or corrupt image data",
        "absurd.nii": "header claims 30000x30000x30000 voxels",
    }
    for name, reason in expected.items():
        with pytest.raises(InputError, match=f"{name}: {reason}"):
            read_image(tmp_path / name)


@needs_shared
def test_the_ct_dicom_series_with_empty_uids_and_jpeg2000_reads_onto_its_label_grid():
    [series] = find_series(CT_DICOM)
    assert series.uid == "" and series.size == (512, 512, 20) and series.uniform
    image = to_metatensor(read_image(CT_DICOM))
    label = nib.load(SHARED / "ct-example" / "example_seg_dicom.nii.gz")
    # the label file stores the rows flipped; in a common orientation the grids coincide
    as_ras = nib.as_closest_canonical(nib.Nifti1Image(image[0].numpy(), image.affine.numpy()))
    assert as_ras.shape == label.shape
    np.testing.assert_allclose(as_ras.affine, nib.as_closest_canonical(label).affine, atol=1e-3)
    assert -1100 < float(image.min()) and float(image.max()) < 4000  # Hounsfield units, rescale applied


@needs_shared
def test_a_study_lists_its_series_and_one_is_chosen_by_index_uid_or_description():
    series = find_series(MR_STUDY)
    assert [s.description for s in series] == ["T1post", "HippoCrop", "T1pre_reg", "FLAIR_reg", "T2_reg"]
    assert series[0].size == (280, 320, 22) and np.allclose(series[0].spacing, (0.6875, 0.6875, 6.5), atol=1e-3)
    with pytest.raises(InputError, match=r"holds 5 series; choose one with --series(.|\n)*\[1\] HippoCrop: 34x50x40"):
        choose_series(MR_STUDY)
    by_index, by_uid, by_name = (
        choose_series(MR_STUDY, "1"),
        choose_series(MR_STUDY, series[1].uid),
        choose_series(MR_STUDY, "hippocrop"),
    )
    assert by_index == by_uid == by_name == series[1]
    assert read_image(MR_STUDY, "HippoCrop").GetSize() == (34, 50, 40)
    with pytest.raises(InputError, match="--series 'reg' matches 3 series"):
        choose_series(MR_STUDY, "reg")


@needs_shared
def test_files_without_extension_and_uneven_slices_are_read_and_reported():
    [series] = find_series(SHARED / "dicom" / "ct-tiny")
    assert series.size == (16, 16, 4) and not series.uniform
    assert "non-uniform slice gaps" in series.summary()


@needs_shared
def test_nrrd_labels_share_the_grid_of_their_dicom_series():
    ct = read_image(SHARED / "dicom" / "ct-3slice-with-seg" / "ct-3slice")
    liver = read_image(SHARED / "dicom" / "ct-3slice-with-seg" / "liver_seg.nrrd")
    assert ct.GetSize() == liver.GetSize() == (512, 512, 3)
    np.testing.assert_allclose(ct.GetOrigin(), liver.GetOrigin(), atol=1e-3)


@needs_shared
def test_png_slices_read_as_2d():
    image = read_image(SHARED / "isbi2012" / "train" / "image" / "0.png")
    assert image.GetDimension() == 2 and image.GetSize() == (512, 512)
    assert set(
        np.unique(sitk.GetArrayViewFromImage(read_image(SHARED / "isbi2012" / "train" / "label" / "0.png")))
    ) <= {0, 255}
