import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.config import PreprocessConfig
from pipeline.dataset import DatasetError
from pipeline.preprocess import preprocess
from tests.conftest import SHARED, needs_shared, write_volume


def _reasons(out) -> dict[str, str]:
    rejected = pd.read_csv(out / "rejected.csv")
    return dict(zip(rejected.case_id, rejected.reason))


def test_real_cases_are_reoriented_normalised_and_listed(hippocampus, tmp_path):
    out = tmp_path / "prep"
    manifest = preprocess(hippocampus, out, PreprocessConfig())
    assert len(manifest) == 6 and _reasons(out) == {}
    assert set(manifest.columns) >= {"case_id", "raw_image", "image", "label", "shape", "voxels_1", "voxels_2"}
    image = nib.load(out / manifest.image[0])
    label = nib.load(out / manifest.label[0])
    assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
    data = image.get_fdata()
    assert abs(data.mean()) < 1e-3 and abs(data.std() - 1) < 1e-2
    assert set(np.unique(label.get_fdata())) == {0, 1, 2}
    assert json.loads((out / "dataset.json").read_text())["labels"]["1"] == "Anterior"


def test_the_float32_label_is_read_as_classes(hippocampus, tmp_path):
    manifest = preprocess(hippocampus, tmp_path / "prep", PreprocessConfig()).set_index("case_id")
    assert nib.load(hippocampus / "labelsTr" / "hippocampus_003.nii.gz").get_data_dtype() == np.float32
    assert manifest.at["hippocampus_003", "voxels_1"] > 0 and manifest.at["hippocampus_003", "voxels_2"] > 0


def test_an_lps_case_is_brought_to_ras(hippocampus, tmp_path):
    for folder in ("imagesTr", "labelsTr"):
        path = hippocampus / folder / "hippocampus_001.nii.gz"
        volume = nib.load(path)
        flipped = np.diag([-1, -1, 1, 1]) @ volume.affine
        nib.save(nib.Nifti1Image(np.asanyarray(volume.dataobj)[::-1, ::-1], flipped), path)
    manifest = preprocess(hippocampus, tmp_path / "prep", PreprocessConfig()).set_index("case_id")
    assert manifest.at["hippocampus_001", "original_orientation"] == "LPS"
    written = nib.load(tmp_path / "prep" / manifest.at["hippocampus_001", "image"])
    assert nib.aff2axcodes(written.affine) == ("R", "A", "S")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("label_shape", "label shape (10, 10, 10) differs from image shape"),
        ("label_affine", "label affine (position, orientation or spacing) differs"),
        ("label_value", "label values [7] are not declared classes [0, 1, 2]"),
        ("label_fraction", "label values are not whole numbers"),
        ("image_nan", "image holds NaN or infinite voxels"),
        ("image_constant", "image is constant"),
        ("image_2d", "expected a 3D volume"),
        ("image_garbage", "cannot be read as a volume pair"),
    ],
)
def test_a_bad_case_is_named_skipped_and_the_rest_go_on(hippocampus, tmp_path, damage, reason):
    image_path = hippocampus / "imagesTr" / "hippocampus_149.nii.gz"
    label_path = hippocampus / "labelsTr" / "hippocampus_149.nii.gz"
    image, label = nib.load(image_path), nib.load(label_path)
    pixels, classes = image.get_fdata().astype(np.float32), np.asanyarray(label.dataobj).astype(np.float32)
    if damage == "label_shape":
        write_volume(label_path, np.zeros((10, 10, 10), np.uint8), label.affine)
    elif damage == "label_affine":
        write_volume(label_path, classes, np.diag([2, 1, 1, 1]) @ label.affine)
    elif damage == "label_value":
        classes[0, 0, 0] = 7
        write_volume(label_path, classes, label.affine)
    elif damage == "label_fraction":
        classes[0, 0, 0] = 0.5
        write_volume(label_path, classes, label.affine)
    elif damage == "image_nan":
        pixels[1, 1, 1] = np.nan
        write_volume(image_path, pixels, image.affine)
    elif damage == "image_constant":
        write_volume(image_path, np.full_like(pixels, 3), image.affine)
    elif damage == "image_2d":
        write_volume(image_path, pixels[:, :, 0], image.affine)
    elif damage == "image_garbage":
        image_path.write_bytes(b"this is not a NIfTI file")
    before = image_path.read_bytes(), label_path.read_bytes()
    out = tmp_path / "prep"
    manifest = preprocess(hippocampus, out, PreprocessConfig())
    assert "hippocampus_149" not in set(manifest.case_id) and len(manifest) == 5
    assert reason in _reasons(out)["hippocampus_149"]
    assert (image_path.read_bytes(), label_path.read_bytes()) == before, "an input file was modified"


def test_no_usable_case_fails_with_the_report_named(hippocampus, tmp_path):
    for label in (hippocampus / "labelsTr").iterdir():
        label.write_bytes(b"broken")
    with pytest.raises(DatasetError, match="no usable case; see .*rejected.csv"):
        preprocess(hippocampus, tmp_path / "prep", PreprocessConfig())


@needs_shared
def test_the_planted_outliers_are_named_and_never_used(hippocampus, tmp_path):
    """The real outliers: an image without label, a label without image, a CT label of another grid."""
    outliers = SHARED / "hippocampus" / "outliers"
    shutil.copy(outliers / "images" / "hippocampus_118.nii.gz", hippocampus / "imagesTr")
    shutil.copy(outliers / "labels" / "hippocampus_010.nii.gz", hippocampus / "labelsTr")
    # the 512x512x94 label, paired with a real hippocampus image under its name
    shutil.copy(outliers / "labels" / "hippocampus_281.nii.gz", hippocampus / "labelsTr")
    shutil.copy(hippocampus / "imagesTr" / "hippocampus_149.nii.gz", hippocampus / "imagesTr" / "hippocampus_281.nii.gz")
    meta = json.loads((hippocampus / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/hippocampus_281.nii.gz", "label": "./labelsTr/hippocampus_281.nii.gz"})
    (hippocampus / "dataset.json").write_text(json.dumps(meta))

    out = tmp_path / "prep"
    manifest = preprocess(hippocampus, out, PreprocessConfig())
    reasons = _reasons(out)
    assert set(manifest.case_id).isdisjoint({"hippocampus_118", "hippocampus_010", "hippocampus_281"})
    assert "not listed as a training pair" in reasons["hippocampus_118"]
    assert "not listed as a training pair" in reasons["hippocampus_010"]
    assert "label shape (512, 512, 94) differs from image shape" in reasons["hippocampus_281"]
