import json

import pytest

from pipeline.config import DataConfig
from pipeline.data.dataset import DatasetError, read_dataset
from tests.conftest import SHARED, needs_shared


def test_reads_the_fixture_dataset(hippocampus):
    dataset = read_dataset(hippocampus)
    assert dataset.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert dataset.modality == "MRI"
    assert [c.case_id for c in dataset.cases][:2] == ["hippocampus_001", "hippocampus_003"]
    assert len(dataset.cases) == 6 and not dataset.problems


def test_unlisted_and_missing_files_are_reported_not_used(hippocampus):
    (hippocampus / "imagesTr" / "stray.nii.gz").write_bytes(b"")
    (hippocampus / "labelsTr" / "hippocampus_149.nii.gz").unlink()
    (hippocampus / "imagesTr" / "._hippocampus_001.nii.gz").write_bytes(b"macOS fork")
    dataset = read_dataset(hippocampus)
    reasons = {p.case_id: p.reason for p in dataset.problems}
    assert reasons["stray"] == "not listed as a training pair in dataset.json"
    assert reasons["hippocampus_149"] == "listed in dataset.json but the file does not exist"
    assert len(dataset.cases) == 5
    assert "._hippocampus_001" not in reasons


def test_entries_outside_the_folder_and_repeats_are_reported(hippocampus):
    meta = json.loads((hippocampus / "dataset.json").read_text())
    meta["training"].append(meta["training"][0])
    meta["training"].append({"image": "../../etc/passwd", "label": "./labelsTr/hippocampus_001.nii.gz"})
    (hippocampus / "dataset.json").write_text(json.dumps(meta))
    dataset = read_dataset(hippocampus)
    reasons = [p.reason for p in dataset.problems]
    assert "case 'hippocampus_001' is listed twice in dataset.json" in reasons
    assert "entry '../../etc/passwd' points outside the dataset folder" in reasons
    assert len(dataset.cases) == 6


def test_the_folders_layout_pairs_by_name_across_formats(tmp_path):
    for folder, names in (("images", ["a.nrrd", "b.nii.gz", "c.mha"]), ("labels", ["a.nii.gz", "b.nii.gz", "d.nrrd"])):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_bytes(b"")
    (tmp_path / "images" / "e").mkdir()  # a DICOM series folder
    (tmp_path / "labels" / "e.nrrd").write_bytes(b"")
    dataset = read_dataset(tmp_path, DataConfig(labels={0: "background", 1: "organ"}, modality="CT"))
    assert [(c.case_id, c.image.name, c.label.name) for c in dataset.cases] == [
        ("a", "a.nrrd", "a.nii.gz"),
        ("b", "b.nii.gz", "b.nii.gz"),
        ("e", "e", "e.nrrd"),
    ]
    assert {(p.case_id, p.reason) for p in dataset.problems} == {
        ("c", "image has no label"),
        ("d", "label has no image"),
    }
    assert dataset.modality == "CT" and dataset.labels == {0: "background", 1: "organ"}
    with pytest.raises(DatasetError, match="needs data.labels and data.modality"):
        read_dataset(tmp_path)


def test_a_folder_in_no_known_layout_is_named(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path}: neither the MSD layout"):
        read_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not a valid MSD dataset.json"):
        read_dataset(tmp_path)


@needs_shared
def test_the_real_hippocampus_dataset_lists_213_cases():
    dataset = read_dataset(SHARED / "hippocampus")
    assert len(dataset.cases) == 213 and not dataset.problems
