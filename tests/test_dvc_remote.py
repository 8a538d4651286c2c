"""The data goes to a DVC remote and comes back byte for byte in a fresh clone: a local folder, and an
S3-compatible server (moto) on loopback, configured as a team would configure its bucket."""

import filecmp
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import smoke_project
from tests.tracking.test_offline import free_port

pytestmark = pytest.mark.slow


def run(*args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def same_tree(left, right) -> bool:
    names = sorted(p.relative_to(left) for p in left.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(right) for p in right.rglob("*") if p.is_file())
    return all(filecmp.cmp(left / n, right / n, shallow=False) for n in names)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git repository of the pipeline whose acquire stage has run: data/raw is DVC's to push."""
    repo = tmp_path_factory.mktemp("project") / "repo"
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    dvc = (sys.executable, "-m", "dvc")
    smoke_project(repo, env)
    run(*dvc, "repro", "acquire", cwd=repo, env=env)
    return repo, env, dvc


def _commit(repo, env, message):
    run("git", "add", "-A", cwd=repo, env=env)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message, cwd=repo, env=env)


def _pull_into_fresh_clone(project, tmp_path, remote):
    repo, env, dvc = project
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path, env=env)
    assert not (clone / "data" / "raw").exists()
    run(*dvc, "pull", "-r", remote, "data/raw", cwd=clone, env=env)
    return clone


def test_a_local_folder_remote_restores_the_raw_data_byte_for_byte(project, tmp_path):
    repo, env, dvc = project
    storage = tmp_path / "dvc-storage"
    run(*dvc, "remote", "add", "-f", "shared-folder", str(storage), cwd=repo, env=env)
    _commit(repo, env, "data on a folder remote")
    run(*dvc, "push", "-r", "shared-folder", cwd=repo, env=env)
    assert any(storage.rglob("*")), "something was pushed"
    clone = _pull_into_fresh_clone(project, tmp_path, "shared-folder")
    assert same_tree(repo / "data" / "raw", clone / "data" / "raw")


@pytest.fixture
def s3_server(tmp_path):
    pytest.importorskip("moto", reason="moto (test extra) is not installed")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.3)
    yield url
    server.terminate()
    server.wait()


def test_an_s3_remote_restores_the_raw_data_byte_for_byte(project, s3_server, tmp_path):
    import boto3

    repo, env, dvc = project
    s3 = boto3.client(
        "s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    s3.create_bucket(Bucket="medseg-team")
    # as in the README: the bucket and endpoint in .dvc/config (committed), credentials from the environment
    run(*dvc, "remote", "add", "-f", "team-s3", "s3://medseg-team/dvc", cwd=repo, env=env)
    run(*dvc, "remote", "modify", "team-s3", "endpointurl", s3_server, cwd=repo, env=env)
    _commit(repo, env, "data on an S3 remote")
    run(*dvc, "push", "-r", "team-s3", cwd=repo, env=env)
    assert s3.list_objects_v2(Bucket="medseg-team")["KeyCount"] > 0
    clone = _pull_into_fresh_clone(project, tmp_path, "team-s3")
    assert same_tree(repo / "data" / "raw", clone / "data" / "raw")
