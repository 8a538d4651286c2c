"""medseg evaluate-folders: any two folders of label maps, matched by name, scored with the stage's code."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import InputError
from pipeline.evaluation.folders import evaluate_folders, parse_labels
from pipeline.evaluation.metrics import case_scores
from tests.conftest import HIPPOCAMPUS_FIXTURE, ROOT, SHARED, needs_shared

LABELS = HIPPOCAMPUS_FIXTURE / "labelsTr"
CLASSES = {1: "Anterior", 2: "Posterior"}


def _write_shifted(source, target, axis=0):
    volume = nib.load(source)
    labels = np.roll(np.asanyarray(volume.dataobj).astype(np.uint8), 1, axis=axis)
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, volume.affine), target)
    return labels


def test_folders_are_matched_by_name_scored_and_the_unmatched_reported(tmp_path):
    references = sorted(LABELS.glob("*.nii.gz"))
    for path in references[:4]:
        _write_shifted(path, tmp_path / "pred" / path.name)
    _write_shifted(references[5], tmp_path / "pred" / "stray.nii.gz")
    (tmp_path / "pred" / "plans.json").write_text("{}")  # what nnU-Net leaves beside its predictions

    summary, matched = evaluate_folders(tmp_path / "pred", LABELS, tmp_path / "out", CLASSES, [1.0, 0.5])

    assert sorted(matched.pairs) == [p.name[: -len(".nii.gz")] for p in references[:4]]
    assert matched.only_predictions == ["stray.nii.gz"]
    assert matched.only_references == [p.name for p in references[4:]]
    assert summary["unmatched_files"] == {"predictions without a reference": 1, "references without a prediction": 2}
    per_case = pd.read_csv(tmp_path / "out" / "per_case.csv", dtype={"case_id": str}, keep_default_na=False)
    assert len(per_case) == 4 and summary["n_cases"] == 4
    for path in references[:4]:
        reference = np.asanyarray(nib.load(path).dataobj).astype(np.int64)
        spacing = nib.load(path).header.get_zooms()
        expected = case_scores(np.roll(reference, 1, axis=0), reference, CLASSES, spacing, {1: 1.0, 2: 0.5})
        row = per_case.set_index("case_id").loc[path.name[: -len(".nii.gz")]]
        for column, value in expected.items():
            assert row[column] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-6)), column
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == summary
    html = (tmp_path / "out" / "report.html").read_text()
    assert "stray.nii.gz" in html and "Anterior" in html and html.count("data:image/png;base64,") == 2
    assert 'src="http' not in html and "<link" not in html  # self-contained
    for picture in ("boxplots.png", "cases.png"):
        assert (tmp_path / "out" / picture).read_bytes()[:4] == b"\x89PNG"


def test_without_labels_the_values_found_are_the_classes(tmp_path):
    path = LABELS / "hippocampus_001.nii.gz"
    _write_shifted(path, tmp_path / "pred" / path.name)
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / path.name).write_bytes(path.read_bytes())
    summary, _ = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")
    assert {"dice_1", "dice_2", "hd95_mm_1"} <= set(summary) and summary["hd95_mm_1"] == pytest.approx(1.0)


def _nifti_with(tmp_path, name, affine, shape=(10, 12, 8)):
    labels = np.zeros(shape, np.uint8)
    labels[3:6, 4:8, 2:5] = 1
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, affine), path)
    return path


@pytest.mark.parametrize(
    "affine, shape, problem",
    [
        (np.diag([1.0, 1.0, 1.5, 1.0]), (10, 12, 8), "spacing"),
        (np.array([[1, 0, 0, 4.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), (10, 12, 8), "origin"),
        (np.diag([-1.0, 1.0, 1.0, 1.0]), (10, 12, 8), "direction"),
        (np.eye(4), (10, 12, 9), "shape"),
    ],
)
def test_a_prediction_on_another_grid_is_an_error_naming_both_files(tmp_path, affine, shape, problem):
    reference = _nifti_with(tmp_path, "ref/case.nii.gz", np.eye(4))
    prediction = _nifti_with(tmp_path, "pred/case.nii.gz", affine, shape)
    with pytest.raises(InputError) as raised:
        evaluate_folders(prediction.parent, reference.parent, tmp_path / "out", {1: "one"})
    message = str(raised.value)
    assert str(prediction) in message and str(reference) in message and problem in message
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_grid_within_the_tolerance_is_accepted(tmp_path):
    reference = _nifti_with(tmp_path, "ref/case.nii.gz", np.eye(4))
    _nifti_with(tmp_path, "pred/case.nii.gz", np.diag([1.00001, 1.0, 1.0, 1.0]))
    summary, _ = evaluate_folders(tmp_path / "pred", reference.parent, tmp_path / "out", {1: "one"})
    assert summary["dice_one"] == 1.0


def test_other_formats_are_read_nrrd_against_nifti(tmp_path):
    path = LABELS / "hippocampus_149.nii.gz"
    image = sitk.ReadImage(str(path))
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(image, str(tmp_path / "pred" / "hippocampus_149.nrrd"))
    summary, _ = evaluate_folders(tmp_path / "pred", LABELS, tmp_path / "out", CLASSES)
    assert summary["n_cases"] == 1 and summary["dice_mean"] == 1.0 and summary["hd95_mm_mean"] == 0.0


def test_no_name_in_common_is_an_error(tmp_path):
    _nifti_with(tmp_path, "pred/other.nii.gz", np.eye(4))
    with pytest.raises(InputError, match="no file names in common"):
        evaluate_folders(tmp_path / "pred", LABELS, tmp_path / "out", CLASSES)


def test_labels_from_pairs_json_and_dataset_json_files(tmp_path):
    assert parse_labels("1=liver, 2=spine") == {1: "liver", 2: "spine"}
    assert parse_labels('{"0": "background", "3": "heart"}') == {3: "heart"}
    assert parse_labels(str(HIPPOCAMPUS_FIXTURE / "dataset.json")) == CLASSES  # MSD: value -> name
    nnunet = tmp_path / "dataset.json"
    nnunet.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spine": 2}}))  # nnU-Net v2: name -> value
    assert parse_labels(str(nnunet)) == {1: "liver", 2: "spine"}
    with pytest.raises(InputError, match="VALUE=NAME"):
        parse_labels("liver")


@pytest.mark.slow
def test_the_command_scores_folders_and_names_mismatched_files(tmp_path):
    reference = _nifti_with(tmp_path, "ref/case.nii.gz", np.eye(4))
    _nifti_with(tmp_path, "pred/case.nii.gz", np.diag([1.0, 1.0, 2.0, 1.0]))
    command = [sys.executable, "-m", "pipeline", "evaluate-folders", str(tmp_path / "pred"), str(reference.parent)]
    failed = subprocess.run([*command, "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert str(tmp_path / "pred" / "case.nii.gz") in failed.stderr and str(reference) in failed.stderr

    _nifti_with(tmp_path, "pred/case.nii.gz", np.eye(4))
    _nifti_with(tmp_path, "pred/extra.nii.gz", np.eye(4))
    done = CliRunner().invoke(
        app, [*command[3:], "-o", str(tmp_path / "out"), "--labels", "1=lesion", "--nsd-tolerance", "2"]
    )
    assert done.exit_code == 0, done.output
    assert "1 cases: mean Dice 1.0000" in done.stdout and "extra.nii.gz" in done.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["dice_lesion"] == 1.0


@needs_shared
def test_shared_hippocampus_labels_against_eroded_copies(tmp_path):
    """Twelve real label maps; each prediction is the label eroded by one voxel, so precision stays 1."""
    from scipy.ndimage import binary_erosion

    references = sorted((SHARED / "hippocampus" / "labelsTr").glob("*.nii.gz"))[:12]
    expected = {}
    (tmp_path / "pred").mkdir()
    for path in references:
        volume = nib.load(path)
        labels = np.rint(np.asanyarray(volume.dataobj)).astype(np.uint8)
        eroded = np.where(binary_erosion(labels > 0), labels, 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(eroded, volume.affine), tmp_path / "pred" / path.name)
        expected[path.name[: -len(".nii.gz")]] = {v: (eroded == v).sum() / (labels == v).sum() for v in (1, 2)}
    summary, _ = evaluate_folders(tmp_path / "pred", references[0].parent, tmp_path / "out", CLASSES)
    per_case = pd.read_csv(tmp_path / "out" / "per_case.csv", dtype={"case_id": str}).set_index("case_id")
    assert (
        summary["n_cases"] == 12
        and summary["unmatched_files"]["references without a prediction"]
        == len(list(references[0].parent.glob("*.nii.gz"))) - 12
    )
    assert summary["precision_mean"] == pytest.approx(1.0)
    for case, kept in expected.items():
        assert per_case.at[case, "sensitivity_Anterior"] == pytest.approx(kept[1], rel=1e-6)
        assert per_case.at[case, "sensitivity_Posterior"] == pytest.approx(kept[2], rel=1e-6)
    assert 0 < summary["hd95_mm_mean"] and summary["nsd_mean"] > 0.9  # eroded surfaces lie within about 1 mm


def test_label_values_that_are_not_whole_numbers_are_refused(tmp_path):
    reference = _nifti_with(tmp_path, "ref/case.nii.gz", np.eye(4))
    blurred = np.zeros((10, 12, 8), np.float32)
    blurred[3:6, 4:8, 2:5] = 0.5
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(blurred, np.eye(4)), tmp_path / "pred" / "case.nii.gz")
    with pytest.raises(InputError, match=r"pred/case.nii.gz: label values are not whole numbers"):
        evaluate_folders(tmp_path / "pred", reference.parent, tmp_path / "out", {1: "one"})
