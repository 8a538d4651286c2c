import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import pipeline.data.preprocess as preprocessing
import pipeline.data.validate as validation
from pipeline.config import DataConfig, PreprocessConfig
from pipeline.data.preprocess import preprocess
from pipeline.errors import DatasetError
from tests.conftest import SHARED, needs_shared, write_volume

SERIAL = PreprocessConfig(workers=1)


def _rejected(out) -> dict[str, str]:
    report = pd.read_csv(out / "validation.csv")
    report = report[report.status == "rejected"]
    return dict(zip(report.case_id, report.reason))


def test_real_cases_are_planned_reoriented_normalised_and_listed(hippocampus, tmp_path):
    out = tmp_path / "prep"
    manifest = preprocess(hippocampus, out, DataConfig(), SERIAL)
    assert len(manifest) == 6 and _rejected(out) == {}
    assert {"case_id", "raw_image", "image", "label", "original_shape", "shape", "crop_start", "voxels_1"} <= set(
        manifest.columns
    )
    image, label = nib.load(out / manifest.image[0]), nib.load(out / manifest.label[0])
    assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
    data = image.get_fdata()
    assert abs(data.mean()) < 1e-3 and abs(data.std() - 1) < 1e-2
    assert set(np.unique(label.get_fdata())) == {0, 1, 2}
    plan = json.loads((out / "plan.json").read_text())
    assert plan["spacing"] == [1.0, 1.0, 1.0] and plan["intensity"] == {"scheme": "zscore"}
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["cases"]["hippocampus_001"]["fingerprint"]["class_voxels"]["1"] > 0
    assert json.loads((out / "dataset.json").read_text())["labels"]["1"] == "Anterior"


def test_the_float32_label_is_read_as_classes(hippocampus, tmp_path):
    manifest = preprocess(hippocampus, tmp_path / "prep", DataConfig(), SERIAL).set_index("case_id")
    assert nib.load(hippocampus / "labelsTr" / "hippocampus_003.nii.gz").get_data_dtype() == np.float32
    assert manifest.at["hippocampus_003", "voxels_1"] > 0 and manifest.at["hippocampus_003", "voxels_2"] > 0


def test_cases_are_resampled_to_the_target_and_cropped_to_their_foreground(hippocampus, tmp_path):
    path = hippocampus / "imagesTr" / "hippocampus_001.nii.gz"
    padded = np.pad(nib.load(path).get_fdata(), ((4, 0), (0, 0), (0, 0)))
    label = np.pad(
        np.asanyarray(nib.load(hippocampus / "labelsTr" / "hippocampus_001.nii.gz").dataobj), ((4, 0), (0, 0), (0, 0))
    )
    write_volume(path, padded.astype(np.float32), nib.load(path).affine)
    write_volume(hippocampus / "labelsTr" / "hippocampus_001.nii.gz", label, nib.load(path).affine)
    out = tmp_path / "prep"
    manifest = preprocess(
        hippocampus, out, DataConfig(), PreprocessConfig(workers=1, spacing=[2.0, 2.0, 2.0])
    ).set_index("case_id")
    case = manifest.loc["hippocampus_001"]
    written = nib.load(out / case.image)
    assert np.allclose(written.header.get_zooms(), 2.0)
    original = [int(s) for s in case.original_shape.split("x")]
    assert original[0] == nib.load(path).shape[0]
    assert case.crop_start.split("x")[0] == "2", "the zero border (4 voxels at 1 mm = 2 at 2 mm) is cropped"


def test_a_second_run_reads_nothing_unchanged_and_redoes_only_what_changed(hippocampus, tmp_path, monkeypatch):
    out = tmp_path / "prep"
    first = preprocess(hippocampus, out, DataConfig(), SERIAL)
    calls = []
    real_check = preprocessing.check_case
    spy = lambda case, *a: calls.append(case.case_id) or real_check(case, *a)  # noqa: E731
    monkeypatch.setattr(preprocessing, "check_case", spy)  # preparing
    monkeypatch.setattr(validation, "check_case", spy)  # validating
    second = preprocess(hippocampus, out, DataConfig(), SERIAL)
    assert calls == [] and second.equals(first)
    shutil.copy(
        hippocampus / "imagesTr" / "hippocampus_149.nii.gz", hippocampus / "imagesTr" / "hippocampus_177.nii.gz"
    )
    shutil.copy(
        hippocampus / "labelsTr" / "hippocampus_149.nii.gz", hippocampus / "labelsTr" / "hippocampus_177.nii.gz"
    )
    preprocess(hippocampus, out, DataConfig(), SERIAL)
    assert calls == ["hippocampus_177", "hippocampus_177"], "validated once, prepared once"


def test_a_process_pool_gives_the_same_result_as_one_process(hippocampus, tmp_path):
    serial = preprocess(hippocampus, tmp_path / "serial", DataConfig(), SERIAL)
    pooled = preprocess(hippocampus, tmp_path / "pooled", DataConfig(), PreprocessConfig(workers=2))
    assert serial.equals(pooled)
    for name in serial.image:
        np.testing.assert_array_equal(
            nib.load(tmp_path / "serial" / name).get_fdata(), nib.load(tmp_path / "pooled" / name).get_fdata()
        )


def test_a_bad_case_is_skipped_or_stops_the_stage_when_asked(hippocampus, tmp_path):
    (hippocampus / "imagesTr" / "hippocampus_149.nii.gz").write_bytes(b"this is not a NIfTI file")
    manifest = preprocess(hippocampus, tmp_path / "prep", DataConfig(), SERIAL)
    assert "hippocampus_149" not in set(manifest.case_id) and len(manifest) == 5
    assert "not an image in a supported format" in _rejected(tmp_path / "prep")["hippocampus_149"]
    with pytest.raises(
        DatasetError, match=r"1 case\(s\) rejected \(preprocess.on_rejected is 'fail'\); see .*validation.csv"
    ):
        preprocess(hippocampus, tmp_path / "prep2", DataConfig(), PreprocessConfig(workers=1, on_rejected="fail"))


def test_no_usable_case_fails_with_the_report_named(hippocampus, tmp_path):
    for label in (hippocampus / "labelsTr").iterdir():
        label.write_bytes(b"broken")
    with pytest.raises(DatasetError, match="no usable case; see .*validation.csv"):
        preprocess(hippocampus, tmp_path / "prep", DataConfig(), SERIAL)


@needs_shared
def test_real_ct_is_clipped_and_standardised_from_its_foreground(tmp_path):
    """The real abdominal CT example, in the images/labels layout, with its multi-organ map."""
    source = SHARED / "ct-example"
    for folder, name in (("images", "example_ct_sm.nii.gz"), ("labels", "example_seg.nii.gz")):
        (tmp_path / "ds" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(source / name, tmp_path / "ds" / folder / "ct.nii.gz")
    values = np.unique(np.asanyarray(nib.load(source / "example_seg.nii.gz").dataobj)).astype(int)
    data = DataConfig(labels={int(v): f"class {v}" for v in range(int(values.max()) + 1)}, modality="CT")
    out = tmp_path / "prep"
    manifest = preprocess(tmp_path / "ds", out, data, SERIAL)
    intensity = json.loads((out / "plan.json").read_text())["intensity"]
    assert (
        intensity["scheme"] == "clip_zscore" and -1100 < intensity["low"] < intensity["mean"] < intensity["high"] < 3100
    )
    image = nib.load(out / manifest.image[0]).get_fdata()
    assert image.max() <= (intensity["high"] - intensity["mean"]) / intensity["std"] + 1e-4


@needs_shared
def test_the_planted_outliers_are_named_and_never_used(hippocampus, tmp_path):
    outliers = SHARED / "hippocampus" / "outliers"
    shutil.copy(outliers / "images" / "hippocampus_118.nii.gz", hippocampus / "imagesTr")
    shutil.copy(outliers / "labels" / "hippocampus_010.nii.gz", hippocampus / "labelsTr")
    manifest = preprocess(hippocampus, tmp_path / "prep", DataConfig(), SERIAL)
    assert set(manifest.case_id).isdisjoint({"hippocampus_118", "hippocampus_010"})
    assert set(_rejected(tmp_path / "prep")) == {"hippocampus_118", "hippocampus_010"}


def test_declared_label_values_become_class_indices(hippocampus, tmp_path):
    meta = json.loads((hippocampus / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "10": "Anterior", "20": "Posterior"}
    (hippocampus / "dataset.json").write_text(json.dumps(meta))
    for path in (hippocampus / "labelsTr").iterdir():
        label = nib.load(path)
        write_volume(path, (np.asanyarray(label.dataobj) * 10).astype(np.uint8), label.affine)
    out = tmp_path / "prep"
    manifest = preprocess(hippocampus, out, DataConfig(), SERIAL)
    assert set(np.unique(nib.load(out / manifest.label[0]).get_fdata())) == {0, 1, 2}
    described = json.loads((out / "dataset.json").read_text())
    assert described["label_values"] == [0, 10, 20] and described["labels"] == {
        "0": "background",
        "1": "Anterior",
        "2": "Posterior",
    }
    assert manifest.voxels_10[0] > 0


def test_outputs_of_another_version_are_redone_not_trusted(hippocampus, tmp_path):
    out = tmp_path / "prep"
    out.mkdir()
    pd.DataFrame({"case_id": ["hippocampus_001"], "image": ["images/hippocampus_001.nii.gz"]}).to_csv(
        out / "manifest.csv", index=False
    )
    (out / "fingerprint.json").write_text('{"cases": {"hippocampus_001": {"digest": "x"}}}')
    manifest = preprocess(hippocampus, out, DataConfig(), SERIAL)
    assert len(manifest) == 6 and (out / manifest.image[0]).is_file()
    (out / "fingerprint.json").write_text("{truncated")
    assert preprocess(hippocampus, out, DataConfig(), SERIAL).equals(manifest)
