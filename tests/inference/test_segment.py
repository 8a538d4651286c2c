import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipeline.config import Params
from pipeline.data.volumes import convert, read_image
from pipeline.inference.segment import InputError, find_sources, segment
from pipeline.networks.model import build_network, describe, save_model
from pipeline.networks.plan import plan_experiment
from tests.conftest import FIXTURES, HIPPOCAMPUS_FIXTURE, SHARED, needs_shared, write_volume


def test_output_has_the_input_name_shape_affine_and_uint8(untrained_model, tmp_path):
    source = HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_177.nii.gz"
    lps = nib.load(source)
    lps_path = write_volume(
        tmp_path / "in" / "lps_case.nii", np.asanyarray(lps.dataobj)[::-1, ::-1], np.diag([-1, -1, 1, 1]) @ lps.affine
    )
    failures = segment([source, tmp_path / "in"], tmp_path / "out", untrained_model)
    assert failures == []
    for original in (source, lps_path):
        written = nib.load(tmp_path / "out" / original.name)
        assert written.shape == nib.load(original).shape
        np.testing.assert_array_equal(written.affine, nib.load(original).affine)
        assert written.get_data_dtype() == np.uint8
        assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1, 2}


def test_a_broken_input_is_reported_and_the_others_written(untrained_model, tmp_path):
    broken = tmp_path / "in" / "broken.nii.gz"
    broken.parent.mkdir()
    broken.write_bytes(b"\x1f\x8b not really gzip")
    good = HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_149.nii.gz"
    failures = segment([broken, good], tmp_path / "out", untrained_model)
    assert [path for path, _ in failures] == [broken]
    assert (tmp_path / "out" / good.name).is_file() and not (tmp_path / "out" / broken.name).exists()


def test_inputs_that_name_nothing_to_segment_are_refused(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        find_sources([tmp_path / "absent.nii.gz"])
    with pytest.raises(InputError, match="no DICOM series found"):
        find_sources([tmp_path])
    (tmp_path / "notes.txt").write_bytes(b"")
    with pytest.raises(InputError, match="notes.txt: not a supported image file"):
        find_sources([tmp_path / "notes.txt"])


def test_an_nrrd_input_gives_an_nrrd_label_map_on_its_grid(untrained_model, tmp_path):
    source = convert(HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_177.nii.gz", tmp_path / "in" / "case.nrrd")
    assert segment([tmp_path / "in" / "case.nrrd"], tmp_path / "out", untrained_model) == []
    written = read_image(tmp_path / "out" / "case.nrrd")
    assert written.GetSize() == source.GetSize() and written.GetPixelIDTypeAsString() == "8-bit unsigned integer"
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin())
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection())


@needs_shared
def test_a_dicom_series_chosen_from_a_study_gives_a_nifti_on_its_grid(untrained_model, tmp_path):
    study = SHARED / "dicom" / "mr-study"
    with pytest.raises(InputError, match="holds 5 series; choose one with --series"):
        segment([study], tmp_path, untrained_model)
    assert segment([study], tmp_path, untrained_model, series="HippoCrop") == []
    written = read_image(tmp_path / "mr-study_HippoCrop.nii.gz")
    source = read_image(study, "HippoCrop")
    assert written.GetSize() == source.GetSize() == (34, 50, 40)
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-6)


@needs_shared
def test_the_real_image_without_label_is_segmented_on_its_grid(untrained_model, tmp_path):
    """hippocampus_118 has no label: a case no model was trained on."""
    source = SHARED / "hippocampus" / "outliers" / "images" / "hippocampus_118.nii.gz"
    assert segment([source], tmp_path, untrained_model) == []
    written, original = nib.load(tmp_path / source.name), nib.load(source)
    assert written.shape == original.shape
    np.testing.assert_array_equal(written.affine, original.affine)


def test_labels_are_written_with_the_values_of_the_training_data(tiny_params, tmp_path):
    from pipeline.networks.model import build_network, describe, save_model
    from tests.conftest import HIPPOCAMPUS_LABELS, MRI_PLAN

    description = describe(
        tiny_params, HIPPOCAMPUS_LABELS, "MRI", MRI_PLAN, tiny_params.train.patch_size, label_values=[0, 10, 20]
    )
    save_model(tmp_path / "model.pt", build_network(description.network), description)
    source = HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_252.nii.gz"
    assert segment([source], tmp_path / "out", tmp_path / "model.pt") == []
    assert set(np.unique(np.asanyarray(nib.load(tmp_path / "out" / source.name).dataobj))) <= {0, 10, 20}


def test_probabilities_are_written_beside_the_labels_on_the_input_grid(untrained_model, tmp_path):
    source = HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_177.nii.gz"
    assert segment([source], tmp_path, untrained_model, tta=True, probabilities=True) == []
    labels, written = nib.load(tmp_path / source.name), nib.load(tmp_path / "hippocampus_177_probabilities.nii.gz")
    assert written.shape == (*nib.load(source).shape, 3) and written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(written.affine, nib.load(source).affine)
    probabilities = written.get_fdata()  # scl_slope 1/255 turns the stored bytes into probabilities
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1, atol=3 / 255)
    # each voxel's label is its most likely class, up to one rounding step of the stored bytes (near-ties)
    stored = np.asanyarray(written.dataobj.get_unscaled()).astype(int)
    of_label = np.take_along_axis(stored, np.asanyarray(labels.dataobj)[..., None].astype(int), axis=-1)[..., 0]
    assert (of_label >= stored.max(axis=-1) - 1).all()


def test_an_nrrd_input_gets_its_probabilities_as_vector_pixels_on_its_grid(untrained_model, tmp_path):
    source = convert(HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_252.nii.gz", tmp_path / "in" / "case.nrrd")
    assert segment([tmp_path / "in" / "case.nrrd"], tmp_path / "out", untrained_model, probabilities=True) == []
    written = read_image(tmp_path / "out" / "case_probabilities.nrrd")
    assert written.GetNumberOfComponentsPerPixel() == 3 and written.GetSize() == source.GetSize()
    assert written.GetPixelIDTypeAsString() == "vector of 8-bit unsigned integer"
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin())
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection())
    totals = sitk.GetArrayViewFromImage(written).sum(axis=-1, dtype=int)
    assert totals.min() >= 253 and totals.max() <= 257


NODULES = FIXTURES / "lung_nodules" / "imagesTr"


@pytest.fixture
def nodule_model(tmp_path) -> Path:
    """An untrained model with the configuration planned for the lung nodules (48x48x7 patches at 0.70 x 0.70 x
    1.25 mm, not pooled along z), and a CT plan: what training would write, weights aside."""
    fingerprints = list(json.loads((FIXTURES / "fingerprints" / "lung_nodules.json").read_text()).values())
    spacing = [0.703125, 0.703125, 1.25]
    configuration = plan_experiment(fingerprints, spacing, 3)["configurations"]["3d"]
    plan = {
        "orientation": "RAS",
        "spacing": spacing,
        "crop_foreground": True,
        "intensity": {"scheme": "clip_zscore", "low": -925.0, "high": 1671.0, "mean": -257.0, "std": 381.0},
    }
    params = Params()
    labels = {"0": "background", "1": "nodule"}
    description = describe(params, labels, "CT", plan, configuration["patch_size"], configuration=configuration)
    torch.manual_seed(0)
    path = tmp_path / "nodules.pt"
    save_model(path, build_network(description.network), description)
    return path


@pytest.mark.parametrize("case", ["LIDC-IDRI-0005_R_1", "LIDC-IDRI-0001_R_1"], ids=["2-slices", "11-slices"])
def test_nodule_labels_land_on_each_inputs_own_grid_even_thinner_than_the_patch(nodule_model, tmp_path, case):
    source = NODULES / f"{case}.nii.gz"
    assert segment([source], tmp_path / "out", nodule_model) == []
    written, original = nib.load(tmp_path / "out" / source.name), nib.load(source)
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
    assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1}
