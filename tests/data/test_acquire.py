import logging
import shutil

import pytest

from pipeline.config import DataConfig
from pipeline.data.acquire import acquire
from pipeline.data.dataset import DatasetError, read_dataset
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


TASK = "Task04_Hippocampus"
ABSENT = "no/such/hippocampus"


class FakeNetwork:
    """Stands in for urllib's ``urlretrieve`` inside MONAI's downloader: serves a tar of the six fixture
    cases laid out as the Decathlon archive, or fails as a machine without a network does."""

    def __init__(self, tmp_path, monkeypatch, reachable=True):
        import hashlib
        import tarfile

        import monai.apps.utils
        from monai.apps import DecathlonDataset

        self.archive = tmp_path / "served.tar"
        with tarfile.open(self.archive, "w") as tar:
            tar.add(HIPPOCAMPUS_FIXTURE, arcname=TASK, filter=lambda info: None if "README" in info.name else info)
        self.md5 = hashlib.md5(self.archive.read_bytes()).hexdigest()
        self.reachable, self.urls = reachable, []
        self.url = DecathlonDataset.resource[TASK]
        self.published_md5 = DecathlonDataset.md5[TASK]
        monkeypatch.setattr(monai.apps.utils, "urlretrieve", self.urlretrieve)

    def urlretrieve(self, url, filename, reporthook=None):
        from urllib.error import URLError

        self.urls.append(url)
        if not self.reachable:
            raise URLError("[Errno -2] Name or service not known")
        shutil.copyfile(self.archive, filename)
        if reporthook:
            reporthook(1, self.archive.stat().st_size, self.archive.stat().st_size)

    def accept_served_archive(self, monkeypatch):
        """The real archive's checksum cannot match our stand-in, so the expected one is set to the stand-in's."""
        from monai.apps import DecathlonDataset

        monkeypatch.setitem(DecathlonDataset.md5, TASK, self.md5)


def test_an_absent_folder_falls_back_to_the_download_and_says_so(tmp_path, monkeypatch, caplog):
    network = FakeNetwork(tmp_path, monkeypatch)
    network.accept_served_archive(monkeypatch)
    out = tmp_path / "data" / "raw"
    with caplog.at_level(logging.INFO, logger="pipeline.data.acquire"):
        acquire(DataConfig(source=str(tmp_path / ABSENT), download=f"msd:{TASK}"), out)
    assert network.urls == [network.url]
    assert len(read_dataset(out).cases) == 6
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging folder (and the tar) left behind"
    assert (
        f"'{tmp_path / ABSENT}' is absent, and downloading msd:{TASK} (data.download) from {network.url}" in caplog.text
    )


def test_a_present_folder_is_used_without_the_network(tmp_path, monkeypatch, caplog):
    network = FakeNetwork(tmp_path, monkeypatch)
    with caplog.at_level(logging.INFO, logger="pipeline.data.acquire"):
        acquire(DataConfig(source=str(HIPPOCAMPUS_FIXTURE), download=f"msd:{TASK}"), tmp_path / "raw")
    assert network.urls == []
    assert f"using the local folder {HIPPOCAMPUS_FIXTURE}" in caplog.text


def test_without_folder_or_network_the_error_names_both_and_the_fix(tmp_path, monkeypatch):
    network = FakeNetwork(tmp_path, monkeypatch, reachable=False)
    with pytest.raises(DatasetError) as raised:
        acquire(DataConfig(source=str(tmp_path / ABSENT), download=f"msd:{TASK}"), tmp_path / "raw")
    message = str(raised.value)
    assert f"the folder '{tmp_path / ABSENT}' is absent, and downloading msd:{TASK} (data.download)" in message
    assert f"from {network.url} failed" in message and "Name or service not known" in message
    assert f"point data.source at a folder holding {TASK}" in message
    assert f"--set data.source=/path/to/{TASK}" in message
    assert not (tmp_path / "raw").exists()


def test_a_download_that_fails_its_checksum_is_refused(tmp_path, monkeypatch):
    network = FakeNetwork(tmp_path, monkeypatch)  # serves an archive whose md5 is not the published one
    with pytest.raises(
        DatasetError, match=f"md5 hash check of downloaded file failed.*expected md5={network.published_md5}"
    ):
        acquire(DataConfig(source=f"msd:{TASK}"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_without_a_download_an_absent_folder_stops_before_the_network(tmp_path, monkeypatch):
    network = FakeNetwork(tmp_path, monkeypatch)
    with pytest.raises(DatasetError, match="nor an existing folder .and data.download is null"):
        acquire(DataConfig(source=str(tmp_path / ABSENT)), tmp_path / "raw")
    assert network.urls == []


def test_download_must_name_a_decathlon_task():
    with pytest.raises(ValueError, match="download"):
        DataConfig(download="https://example.org/data.tar")
