"""medseg doctor: each check says what it found, and a fix where the default run could not work."""

import sys
import urllib.error
import urllib.request
from importlib import metadata

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.cli import app, doctor
from tests.conftest import HIPPOCAMPUS_FIXTURE

TASK_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar"


def write_params(path, **data):
    path.write_text(yaml.safe_dump({"data": data}))
    return path


class FakeNetwork:
    """Stands in for urllib's ``urlopen``: answers, or fails as a machine without a network does."""

    def __init__(self, monkeypatch, reachable):
        self.reachable, self.requests = reachable, []
        monkeypatch.setattr(urllib.request, "urlopen", self.urlopen)

    def urlopen(self, request, timeout):
        self.requests.append((request.full_url, request.get_method()))
        if not self.reachable:
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        return open(__file__, "rb")  # any context manager


def test_the_installed_libraries_are_reported_with_their_versions():
    checks = {check.name: check for check in doctor.run_checks()}
    for name, distribution in doctor.LIBRARIES.items():
        assert checks[name].status == "ok" and checks[name].detail == metadata.version(distribution)
    assert checks["Python"].detail.startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    assert checks["torch"].detail.startswith(torch.__version__)
    assert list(checks) == ["Python", "torch", *doctor.LIBRARIES, "data", "tracking"]


def test_a_missing_library_fails_with_the_set_up_command():
    check = doctor.check_library("Nothing", "no-such-distribution-medseg")
    assert check.status == "fail" and check.detail == "not installed" and "make run" in check.fix


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use a GPU here")
def test_a_gpu_that_torch_cannot_use_is_a_warning_with_the_cuda_build_as_fix(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    check = doctor.check_torch()
    assert check.status == "warn"
    assert "CPU build" in check.detail and "device: CPU" in check.detail and "NVIDIA H200" in check.detail
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cu" in check.fix


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use a GPU here")
def test_without_a_gpu_the_cpu_build_is_fine(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    check = doctor.check_torch()
    assert check.status == "ok" and check.detail == f"{torch.__version__}, CPU build, device: CPU"


def test_a_local_dataset_folder_needs_no_network(tmp_path, monkeypatch):
    network = FakeNetwork(monkeypatch, reachable=False)
    params = write_params(tmp_path / "params.yaml", source=str(HIPPOCAMPUS_FIXTURE), download="msd:Task04_Hippocampus")
    check = doctor.check_data(params)
    assert check.status == "ok" and f"the local folder {HIPPOCAMPUS_FIXTURE}" in check.detail
    assert network.requests == []


def test_an_absent_folder_is_fine_when_the_download_answers(tmp_path, monkeypatch):
    network = FakeNetwork(monkeypatch, reachable=True)
    params = write_params(tmp_path / "params.yaml", source=str(tmp_path / "absent"), download="msd:Task04_Hippocampus")
    check = doctor.check_data(params)
    assert check.status == "ok"
    assert f"{tmp_path / 'absent'} (data.source in {params}) is absent" in check.detail
    assert f"acquire will download msd:Task04_Hippocampus from {TASK_URL}" in check.detail
    assert network.requests == [(TASK_URL, "HEAD")]


def test_without_folder_or_network_the_fix_is_a_local_copy(tmp_path, monkeypatch):
    FakeNetwork(monkeypatch, reachable=False)
    params = write_params(tmp_path / "params.yaml", source=str(tmp_path / "absent"), download="msd:Task04_Hippocampus")
    check = doctor.check_data(params)
    assert check.status == "fail"
    assert "is absent" in check.detail and "Name or service not known" in check.detail
    assert check.fix == (
        f"connect to the network, or point data.source in {params} at a local copy (dataset.json, imagesTr/, labelsTr/)"
    )


def test_an_absent_folder_without_download_or_a_broken_params_file_fails(tmp_path, monkeypatch):
    network = FakeNetwork(monkeypatch, reachable=True)
    params = write_params(tmp_path / "params.yaml", source=str(tmp_path / "absent"))
    check = doctor.check_data(params)
    assert check.status == "fail" and "data.download is null" in check.detail and "point data.source" in check.fix
    assert network.requests == []
    params.write_text("data: {sorce: x}\n")
    check = doctor.check_data(params)
    assert check.status == "fail" and "sorce" in check.detail and "medseg configure" in check.fix


def test_without_a_params_file_the_defaults_download_the_hippocampus(tmp_path, monkeypatch):
    FakeNetwork(monkeypatch, reachable=True)
    check = doctor.check_data(tmp_path / "params.yaml")
    assert check.status == "ok" and f"download msd:Task04_Hippocampus from {TASK_URL}" in check.detail


def test_the_tracking_store_is_checked_where_it_would_be_written(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert doctor.check_tracking() == doctor.Check("tracking", "ok", "sqlite:///mlflow.db (will be created)")
    (tmp_path / "mlflow.db").write_bytes(b"")
    assert doctor.check_tracking().detail == "sqlite:///mlflow.db (exists, writable)"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/missing/runs.db")
    check = doctor.check_tracking()
    assert check.status == "fail" and f"{tmp_path}/missing does not exist" in check.detail
    assert "MLFLOW_TRACKING_URI" in check.fix


def test_a_tracking_server_is_asked_for_its_health(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000/")
    network = FakeNetwork(monkeypatch, reachable=True)
    assert doctor.check_tracking().status == "ok"
    assert network.requests == [("http://tracking.example:5000/health", "HEAD")]
    network.reachable = False
    check = doctor.check_tracking()
    assert check.status == "fail" and "Name or service not known" in check.detail


def test_the_command_prints_every_check_and_fails_on_a_missing_essential(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def medseg_doctor(params):
        return CliRunner().invoke(app, ["doctor", "--params", str(params)])

    ready = medseg_doctor(write_params(tmp_path / "ready.yaml", source=str(HIPPOCAMPUS_FIXTURE)))
    assert ready.exit_code == 0, ready.output
    lines = ready.output.splitlines()
    assert [line.split()[1] for line in lines] == ["Python", "torch", *doctor.LIBRARIES, "data", "tracking"]
    assert all(line.startswith(("ok ", "warn ")) for line in lines)

    missing = medseg_doctor(write_params(tmp_path / "missing.yaml", source=str(tmp_path / "absent")))
    assert missing.exit_code == 1
    assert "FAIL data" in missing.output and "fix: point data.source in" in missing.output
