import pytest

from pipeline.acquire import acquire
from pipeline.config import DataConfig
from pipeline.dataset import DatasetError, read_dataset
from tests.conftest import HIPPOCAMPUS_FIXTURE


def test_a_local_source_is_copied_in_msd_layout(tmp_path):
    out = tmp_path / "data" / "raw"
    acquire(DataConfig(source=str(HIPPOCAMPUS_FIXTURE)), out)
    assert len(read_dataset(out).cases) == 6
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_a_second_acquire_replaces_the_first(tmp_path):
    out = tmp_path / "raw"
    acquire(DataConfig(source=str(HIPPOCAMPUS_FIXTURE)), out)
    (out / "imagesTr" / "old.nii.gz").write_bytes(b"")
    acquire(DataConfig(source=str(HIPPOCAMPUS_FIXTURE)), out)
    assert not (out / "imagesTr" / "old.nii.gz").exists()


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(DatasetError, match="neither 'msd:TaskNN_Name' nor an existing folder"):
        acquire(DataConfig(source=str(tmp_path / "nowhere")), tmp_path / "raw")
    with pytest.raises(DatasetError, match="unknown Decathlon task 'Task99_Nothing'"):
        acquire(DataConfig(source="msd:Task99_Nothing"), tmp_path / "raw")
    with pytest.raises(DatasetError, match="neither the MSD layout"):
        acquire(DataConfig(source=str(tmp_path)), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
