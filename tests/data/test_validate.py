"""`medseg validate`: every bad input named, every odd but valid one let through, nothing modified."""

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.config import DataConfig
from pipeline.data.validate import validate
from tests.conftest import SHARED, needs_shared, write_volume

CASE = "hippocampus_149"


def _damage(root, damage):
    image_path, label_path = root / "imagesTr" / f"{CASE}.nii.gz", root / "labelsTr" / f"{CASE}.nii.gz"
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
    elif damage == "image_inf":
        pixels[1, 1, 1] = np.inf
        write_volume(image_path, pixels, image.affine)
    elif damage == "image_constant":
        write_volume(image_path, np.full_like(pixels, 3), image.affine)
    elif damage == "image_2d":
        write_volume(image_path, pixels[:, :, 0], image.affine)
    elif damage == "image_4d":
        write_volume(image_path, np.stack([pixels, pixels], axis=-1), image.affine)
    elif damage == "image_garbage":
        image_path.write_bytes(b"this is not a NIfTI file")
    elif damage == "image_empty":
        image_path.write_bytes(b"")
    elif damage == "image_truncated":
        image_path.write_bytes(image_path.read_bytes()[:2000])
    return image_path, label_path


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("label_shape", "label shape (10, 10, 10) differs from image shape"),
        ("label_affine", "label affine (position, orientation or spacing) differs"),
        ("label_value", "label values [7] are not declared classes [0, 1, 2]"),
        ("label_fraction", "label values are not whole numbers"),
        ("image_nan", "image holds NaN or infinite voxels"),
        ("image_inf", "image holds NaN or infinite voxels"),
        ("image_constant", "image is constant"),
        ("image_2d", "2D image"),
        ("image_4d", "4D image"),
        ("image_garbage", "not an image in a supported format"),
        ("image_empty", "empty file"),
        ("image_truncated", "truncated or corrupt image data"),
    ],
)
def test_each_problem_rejects_the_case_with_its_reason(hippocampus, tmp_path, damage, reason):
    image_path, label_path = _damage(hippocampus, damage)
    before = image_path.read_bytes(), label_path.read_bytes()
    report = validate(hippocampus, tmp_path / "report.csv").set_index("case_id")
    assert report.at[CASE, "status"] == "rejected"
    assert reason in report.at[CASE, "reason"]
    assert (report.drop(CASE).status == "ok").all()
    assert (image_path.read_bytes(), label_path.read_bytes()) == before, "an input file was modified"
    assert pd.read_csv(tmp_path / "report.csv", keep_default_na=False).equals(report.reset_index())


def test_odd_but_valid_cases_pass(hippocampus, tmp_path):
    """LPS orientation, anisotropic spacing, signed integers, an all-background label."""
    image_path, label_path = hippocampus / "imagesTr" / f"{CASE}.nii.gz", hippocampus / "labelsTr" / f"{CASE}.nii.gz"
    pixels = nib.load(image_path).get_fdata()
    classes = np.asanyarray(nib.load(label_path).dataobj)
    lps_anisotropic = np.diag([-0.7, -0.7, 3.0, 1.0])
    write_volume(image_path, (pixels[::-1, ::-1] - pixels.mean()).astype(np.int16), lps_anisotropic)
    write_volume(label_path, np.zeros_like(classes), lps_anisotropic)
    report = validate(hippocampus, tmp_path / "report.csv").set_index("case_id")
    assert report.at[CASE, "status"] == "warning" and "label is all background" in report.at[CASE, "reason"]
    assert (report.status != "rejected").all()


def test_dataset_json_entries_outside_the_folder_or_repeated_are_rejected(hippocampus, tmp_path):
    meta = json.loads((hippocampus / "dataset.json").read_text())
    meta["training"] += [meta["training"][0], {"image": "../../etc/passwd", "label": "./labelsTr/x.nii.gz"}]
    (hippocampus / "dataset.json").write_text(json.dumps(meta))
    report = validate(hippocampus, tmp_path / "report.csv")
    reasons = " | ".join(report[report.status == "rejected"].reason)
    assert "listed twice in dataset.json" in reasons and "points outside the dataset folder" in reasons


@pytest.mark.slow
def test_the_command_exits_1_when_something_is_rejected(hippocampus, tmp_path):
    command = [sys.executable, "-m", "pipeline", "validate", str(hippocampus), "--report", str(tmp_path / "r.csv")]
    clean = subprocess.run(command, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    _damage(hippocampus, "image_garbage")
    broken = subprocess.run(command, capture_output=True, text=True)
    assert broken.returncode == 1 and f"{CASE}" in broken.stdout and "Traceback" not in broken.stderr


@needs_shared
def test_the_planted_outliers_are_all_rejected(hippocampus, tmp_path):
    outliers = SHARED / "hippocampus" / "outliers"
    shutil.copy(outliers / "images" / "hippocampus_118.nii.gz", hippocampus / "imagesTr")
    shutil.copy(outliers / "labels" / "hippocampus_010.nii.gz", hippocampus / "labelsTr")
    shutil.copy(outliers / "labels" / "hippocampus_281.nii.gz", hippocampus / "labelsTr")
    shutil.copy(hippocampus / "imagesTr" / f"{CASE}.nii.gz", hippocampus / "imagesTr" / "hippocampus_281.nii.gz")
    meta = json.loads((hippocampus / "dataset.json").read_text())
    meta["training"].append(
        {"image": "./imagesTr/hippocampus_281.nii.gz", "label": "./labelsTr/hippocampus_281.nii.gz"}
    )
    (hippocampus / "dataset.json").write_text(json.dumps(meta))
    report = validate(hippocampus, tmp_path / "report.csv").set_index("case_id")
    assert report.loc[["hippocampus_118", "hippocampus_010", "hippocampus_281"], "status"].eq("rejected").all()
    assert "label shape (512, 512, 94) differs from image shape" in report.at["hippocampus_281", "reason"]
    assert (report.status == "rejected").sum() == 3


@needs_shared
def test_a_folders_dataset_of_dicom_images_and_nrrd_labels(tmp_path):
    """The real 3-slice CT: a DICOM series as the image, an NRRD label map matched by name."""
    source = SHARED / "dicom" / "ct-3slice-with-seg"
    shutil.copytree(source / "ct-3slice", tmp_path / "ds" / "images" / "ct")
    (tmp_path / "ds" / "labels").mkdir()
    shutil.copy(source / "liver_spine_seg.nrrd", tmp_path / "ds" / "labels" / "ct.nrrd")
    report = validate(
        tmp_path / "ds", tmp_path / "r.csv", DataConfig(labels={0: "background", 1: "liver", 2: "spine"}, modality="CT")
    )
    assert list(report.status) == ["ok"], report.reason.tolist()


@needs_shared
def test_isbi_png_slices_validate_as_a_2d_dataset(tmp_path):
    source = SHARED / "isbi2012" / "train"
    for folder in ("image", "label"):
        (tmp_path / "ds" / f"{folder}s").mkdir(parents=True)
        for name in ("0.png", "1.png"):
            shutil.copy(source / folder / name, tmp_path / "ds" / f"{folder}s" / name)
    config = DataConfig(labels={0: "membrane", 255: "cell"}, modality="EM", dimensions=2)
    report = validate(tmp_path / "ds", tmp_path / "r.csv", config)
    assert list(report.status) == ["ok", "ok"], report.reason.tolist()
    as_3d = validate(
        tmp_path / "ds", tmp_path / "r.csv", DataConfig(labels={0: "membrane", 255: "cell"}, modality="EM")
    )
    assert "2D image (512x512) in a 3D dataset" in as_3d.reason[0]
