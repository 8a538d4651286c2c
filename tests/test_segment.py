import nibabel as nib
import numpy as np
import pytest

from pipeline.segment import InputError, input_files, segment
from tests.conftest import HIPPOCAMPUS_FIXTURE, SHARED, needs_shared, write_volume


def test_output_has_the_input_name_shape_affine_and_uint8(untrained_model, tmp_path):
    source = HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_177.nii.gz"
    lps = nib.load(source)
    lps_path = write_volume(tmp_path / "in" / "lps_case.nii", np.asanyarray(lps.dataobj)[::-1, ::-1], np.diag([-1, -1, 1, 1]) @ lps.affine)
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
        input_files([tmp_path / "absent.nii.gz"])
    with pytest.raises(InputError, match="folder holds no NIfTI file"):
        input_files([tmp_path])
    (tmp_path / "scan.png").write_bytes(b"")
    with pytest.raises(InputError, match="scan.png: not a NIfTI file"):
        input_files([tmp_path / "scan.png"])


@needs_shared
def test_the_real_image_without_label_is_segmented_on_its_grid(untrained_model, tmp_path):
    """hippocampus_118 has no label: a case no model was trained on."""
    source = SHARED / "hippocampus" / "outliers" / "images" / "hippocampus_118.nii.gz"
    assert segment([source], tmp_path, untrained_model) == []
    written, original = nib.load(tmp_path / source.name), nib.load(source)
    assert written.shape == original.shape
    np.testing.assert_array_equal(written.affine, original.affine)
