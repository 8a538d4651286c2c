"""``medseg segment --engine ray``: real cases on a real local Ray (and a two-node cluster on this machine)."""

from __future__ import annotations

import csv
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.files import file_digest
from pipeline.inference.bulk import MANIFEST, is_finished
from pipeline.inference.segment import label_dtype, segment
from pipeline.networks.model import build_network, describe, save_model
from tests.conftest import HIPPOCAMPUS_FIXTURE, HIPPOCAMPUS_LABELS, MRI_PLAN

# trainings, MLflow stores or Ray workers: `make test` runs these, `make test-fast` leaves them out
pytestmark = pytest.mark.slow

IMAGES = HIPPOCAMPUS_FIXTURE / "imagesTr"
CASES = sorted(IMAGES.glob("*.nii.gz"))


@pytest.fixture
def ray():
    return pytest.importorskip("ray")


def run_segment(*args):
    return CliRunner().invoke(app, ["segment", *map(str, args)])


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / MANIFEST, newline="") as stream:
        return {Path(row["input"]).name: row for row in csv.DictReader(stream)}


def labels_of(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def test_labels_get_the_smallest_integer_type_that_holds_their_values(tiny_params, tmp_path):
    assert label_dtype([0, 1, 2]) == np.uint8
    assert label_dtype([0, 10, 300]) == np.uint16
    assert label_dtype([0, 70000]) == np.uint32
    assert label_dtype([-1, 0, 1]) == np.int8
    description = describe(
        tiny_params, HIPPOCAMPUS_LABELS, "MRI", MRI_PLAN, tiny_params.train.patch_size, label_values=[0, 256, 1000]
    )
    save_model(tmp_path / "model.pt", build_network(description.network), description)
    assert segment([CASES[0]], tmp_path / "out", tmp_path / "model.pt") == []
    written = nib.load(tmp_path / "out" / CASES[0].name)
    assert written.get_data_dtype() == np.uint16
    assert set(np.unique(labels_of(tmp_path / "out" / CASES[0].name))) <= {0, 256, 1000}


def test_two_ray_workers_write_what_the_local_engine_writes(ray, untrained_model, tmp_path):
    result = run_segment(IMAGES, "-o", tmp_path / "ray", "-m", untrained_model, "--engine", "ray", "--workers", 2)
    assert result.exit_code == 0, result.output
    assert "6 segmented, 0 skipped" in result.output
    assert segment([IMAGES], tmp_path / "local", untrained_model) == []
    rows = manifest(tmp_path / "ray")
    assert sorted(rows) == [case.name for case in CASES]
    for case in CASES:
        local, distributed = nib.load(tmp_path / "local" / case.name), nib.load(tmp_path / "ray" / case.name)
        np.testing.assert_array_equal(
            labels_of(tmp_path / "ray" / case.name), labels_of(tmp_path / "local" / case.name)
        )
        np.testing.assert_array_equal(distributed.affine, local.affine)
        assert distributed.get_data_dtype() == local.get_data_dtype() == np.uint8
        row = rows[case.name]
        assert (row["status"], row["output"], row["error"]) == ("done", case.name, "")
        assert row["output_sha256"] == file_digest(tmp_path / "ray" / case.name)
        assert row["model_sha256"] == file_digest(untrained_model) and float(row["seconds"]) > 0
        assert 100 < float(row["worker_peak_mib"]) < 8000, "a worker's peak memory: a Python process with torch"


def test_unreadable_inputs_fail_with_their_reasons_and_the_others_finish(ray, untrained_model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in CASES[:2]:
        shutil.copy(case, inputs)
    whole = CASES[2].read_bytes()
    (inputs / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    (inputs / "notes.nii.gz").write_text("not an image, whatever its name says\n")
    result = run_segment(inputs, "-o", tmp_path / "out", "-m", untrained_model, "--engine", "ray", "--workers", 2)
    assert result.exit_code == 1
    assert "2 segmented, 0 skipped (finished earlier with this model), 2 failed" in result.output
    rows = manifest(tmp_path / "out")
    assert {name: row["status"] for name, row in rows.items()} == {
        CASES[0].name: "done",
        CASES[1].name: "done",
        "truncated.nii.gz": "failed",
        "notes.nii.gz": "failed",
    }
    for name in ("truncated.nii.gz", "notes.nii.gz"):
        assert rows[name]["error"].startswith(str(inputs / name)), rows[name]["error"]
        assert f"failed: {inputs / name}: " in result.output
        assert f"{inputs / name}: {inputs / name}" not in result.output
        assert not (tmp_path / "out" / name).exists()
    assert "truncated or corrupt" in rows["truncated.nii.gz"]["error"]


def test_a_second_run_skips_what_is_finished_and_redoes_a_deleted_output_alone(ray, untrained_model, tmp_path):
    command = (IMAGES, "-o", tmp_path / "out", "-m", untrained_model, "--engine", "ray", "--workers", 2)
    assert run_segment(*command).exit_code == 0
    written = {case.name: (tmp_path / "out" / case.name).stat().st_mtime_ns for case in CASES}
    again = run_segment(*command)
    assert again.exit_code == 0 and "0 segmented, 6 skipped (finished earlier with this model)" in again.output
    assert {row["status"] for row in manifest(tmp_path / "out").values()} == {"skipped"}
    (tmp_path / "out" / CASES[3].name).unlink()
    redo = run_segment(*command)
    assert redo.exit_code == 0 and "1 segmented, 5 skipped" in redo.output
    rows = manifest(tmp_path / "out")
    assert rows[CASES[3].name]["status"] == "done" and (tmp_path / "out" / CASES[3].name).is_file()
    for case in CASES[:3] + CASES[4:]:
        assert (tmp_path / "out" / case.name).stat().st_mtime_ns == written[case.name]
        assert rows[case.name]["status"] == "skipped"
    # another model: its outputs are not this model's, unless told to keep them
    other = tmp_path / "other.pt"
    shutil.copy(untrained_model, other)
    with open(other, "ab") as stream:  # the same weights, another file digest
        stream.write(b"\0")
    kept = run_segment(IMAGES, "-o", tmp_path / "out", "-m", other, "--engine", "ray", "--keep-other-models")
    assert kept.exit_code == 0 and "0 segmented, 6 skipped (finished earlier)" in kept.output
    row = manifest(tmp_path / "out")[CASES[0].name]
    assert row["tta"] == "false" and is_finished(row, tmp_path / "out", file_digest(untrained_model))
    assert not is_finished(row, tmp_path / "out", file_digest(other))  # without --keep-other-models: redone
    # another TTA setting makes other labels: every case runs again, even keeping other models' outputs
    with_tta = run_segment(
        IMAGES, "-o", tmp_path / "out", "-m", other, "--engine", "ray", "--keep-other-models", "--tta"
    )
    assert with_tta.exit_code == 0 and "6 segmented, 0 skipped" in with_tta.output
    assert {row["tta"] for row in manifest(tmp_path / "out").values()} == {"true"}
    assert not is_finished({**row, "tta": ""}, tmp_path / "out", None)  # a manifest from before TTA was recorded


def _kill_first_busy_worker(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first worker process of this test's Ray seen segmenting (Ray titles it ray::SegmentWorker...)."""
    while not stop.is_set() and not killed:
        for process in psutil.Process().children(recursive=True):
            try:
                busy = "SegmentWorker.segment" in " ".join(process.cmdline())
            except psutil.Error:
                continue
            if busy:
                process.send_signal(signal.SIGKILL)
                killed.append(process.pid)
                return
        time.sleep(0.05)


def test_a_worker_killed_mid_run_has_its_cases_run_again_and_every_output_written_once(ray, untrained_model, tmp_path):
    killed, stop = [], threading.Event()
    watcher = threading.Thread(target=_kill_first_busy_worker, args=(killed, stop))
    watcher.start()
    try:
        result = run_segment(IMAGES, "-o", tmp_path / "out", "-m", untrained_model, "--engine", "ray", "--workers", 2)
    finally:
        stop.set()
        watcher.join()
    assert killed, "no worker was seen segmenting"
    assert result.exit_code == 0, result.output
    names = [case.name for case in CASES]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*names, MANIFEST])  # no .partial-* left
    rows = manifest(tmp_path / "out")
    assert sorted(rows) == names and {row["status"] for row in rows.values()} == {"done"}
    for name in names:
        assert rows[name]["output_sha256"] == file_digest(tmp_path / "out" / name)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(nodes: list[subprocess.Popen]) -> None:
    """End the processes that this test's `ray start --block` started, and theirs, and nothing else."""
    tree = []
    for node in nodes:
        try:
            tree += [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for node in nodes:
        node.terminate()
    _, alive = psutil.wait_procs(tree, timeout=20)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def two_nodes(ray):
    """A head and a second node, one CPU each, on this machine: the address to join."""
    port, temp_dir = _free_port(), tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
    start = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--num-cpus", "1"]
    start += ["--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
    logs = open(Path(temp_dir) / "nodes.log", "w")
    nodes = [
        subprocess.Popen(
            [*start, "--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp_dir],
            stdout=logs,
            stderr=subprocess.STDOUT,
        )
    ]
    address = f"127.0.0.1:{port}"
    try:
        nodes.append(subprocess.Popen([*start, "--address", address], stdout=logs, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not _nodes_alive(ray, address, 2):
            time.sleep(1)
        assert _nodes_alive(ray, address, 2), (Path(temp_dir) / "nodes.log").read_text()
        yield address, nodes
    finally:
        _stop(nodes)
        logs.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _nodes_alive(ray, address: str, count: int) -> bool:
    try:
        ray.init(address=address, logging_level="ERROR")
    except Exception:  # the head is not up yet
        return False
    try:
        return sum(node["Alive"] for node in ray.nodes()) >= count
    finally:
        ray.shutdown()


def test_a_two_node_cluster_joined_by_address_segments_on_both_nodes(two_nodes, untrained_model, tmp_path):
    address, nodes = two_nodes
    used, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            for index, node in enumerate(nodes):
                try:
                    titles = [" ".join(p.cmdline()) for p in psutil.Process(node.pid).children(recursive=True)]
                except psutil.Error:
                    continue
                if any("SegmentWorker" in title for title in titles):
                    used.add(index)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        command = (IMAGES, "-o", tmp_path / "out", "-m", untrained_model, "--engine", "ray", "--workers", 2)
        result = run_segment(*command, "--address", address)
    finally:
        stop.set()
        watcher.join()
    assert result.exit_code == 0, result.output
    assert used == {0, 1}, "each node should have run a worker"
    assert {row["status"] for row in manifest(tmp_path / "out").values()} == {"done"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*(c.name for c in CASES), MANIFEST])
