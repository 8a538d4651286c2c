"""A team's tracking server for real: scripts/tracking-server on a PostgreSQL started on loopback, two trainings
and their evaluations at the same time, both landing completely, the registry's aliases decided once, a model
evaluated again still one version."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from pipeline.data.preprocess import preprocess
from pipeline.data.split import split
from pipeline.params import params_yaml
from tests.conftest import ROOT
from tests.tracking.test_offline import free_port, stop_server

pytestmark = pytest.mark.slow


def postgres_program(name: str) -> str | None:
    installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return installed[-1] if installed else shutil.which(name)


needs_postgres = pytest.mark.skipif(
    not (postgres_program("initdb") and postgres_program("pg_ctl")),
    reason="PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)",
)


@pytest.fixture
def postgres():
    """A PostgreSQL cluster of its own on a loopback port, with an empty ``mlflow`` database; its URI."""
    pytest.importorskip("psycopg", reason="the team extra (psycopg) is not installed")
    import psycopg

    folder = Path(tempfile.mkdtemp(prefix="medseg-postgres-"))
    as_owner = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    initdb = [*as_owner, postgres_program("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
    subprocess.run(initdb, check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*as_owner, postgres_program("pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o", options]
    subprocess.run([*pg_ctl, "start"], check=True, capture_output=True)
    try:
        connection = psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True)
        connection.cursor().execute("CREATE DATABASE mlflow")
        connection.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def team_server(postgres, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "MEDSEG_TRACKING_DB": postgres,
        "MEDSEG_ARTIFACTS": str(tmp_path / "team-artifacts"),
        "MEDSEG_TRACKING_PORT": str(port),
        "MEDSEG_TRACKING_WORKERS": "1",
        "PYTHON": sys.executable,
    }
    log = open(tmp_path / "server.log", "ab")
    server = subprocess.Popen(
        [str(ROOT / "scripts" / "tracking-server")], env=env, stdout=log, stderr=log, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline, "the tracking server did not answer within 120 s"
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    stop_server(server)


def _together(commands, cwd, env):
    running = [
        subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in commands
    ]
    for process in running:
        output = process.communicate(timeout=300)[0].decode()
        assert process.returncode == 0, output[-3000:]


@needs_postgres
def test_two_trainings_at_once_land_completely_on_the_postgresql_server(
    team_server, hippocampus, tiny_params, tmp_path
):
    preprocess(hippocampus, tmp_path / "prep", tiny_params.data, tiny_params.preprocess)
    split(tmp_path / "prep" / "manifest.csv", tmp_path / "split.json", tiny_params.split, tiny_params.seed)
    for name, seed in (("a", 1), ("b", 2)):
        (tmp_path / f"{name}.yaml").write_text(params_yaml(tiny_params.model_copy(update={"seed": seed})))
    env = {**os.environ, "MLFLOW_TRACKING_URI": team_server, "OMP_NUM_THREADS": "1"}
    medseg = [sys.executable, "-m", "pipeline"]
    _together([[*medseg, "train", "prep", "split.json", f"models_{n}", "-p", f"{n}.yaml"] for n in "ab"], tmp_path, env)
    _together(
        [
            [*medseg, "evaluate", f"models_{n}/model.pt", "prep", "split.json", f"reports_{n}"]
            + ["--run-file", f"models_{n}/mlflow_run.json", "-p", f"{n}.yaml"]
            for n in "ab"
        ],
        tmp_path,
        env,
    )

    assert not list(tmp_path.glob("models_*/mlflow_pending")), "nothing had to wait for the server"
    client = mlflow.MlflowClient(team_server)
    runs = {
        n: client.get_run(json.loads((tmp_path / f"models_{n}" / "mlflow_run.json").read_text())["run_id"])
        for n in "ab"
    }
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dice_mean")] == [1, 2]
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"model", "history.csv", "inputs", "data", "evaluation"} <= files
        assert len(client.list_artifacts(run.info.run_id, "evaluation")) == 5

    versions = client.search_model_versions("name='medseg-hippocampus'")
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs.values())
    champion = client.get_model_version_by_alias("medseg-hippocampus", "champion")
    scores = {r.info.run_id: client.get_run(r.info.run_id).data.metrics["eval_dice_mean"] for r in runs.values()}
    assert champion.run_id == max(scores, key=scores.get), "the better evaluation holds champion"
    loser = min(scores, key=scores.get)
    if scores[loser] < scores[champion.run_id]:
        assert client.get_model_version_by_alias("medseg-hippocampus", "challenger").run_id == loser
        # each run's tags say what its evaluation decided then: the loser, evaluated before the other had a score,
        # was champion until the better one came (whose reason names whom it beat)
        loser_tags = client.get_run(loser).data.tags
        if loser_tags["registry.alias"] == "champion":
            assert loser_tags["registry.reason"].startswith("the only version scored")
            assert "beats version" in client.get_run(champion.run_id).data.tags["registry.reason"]
        else:
            assert loser_tags["registry.alias"] == "challenger"

    # evaluating a model again records the evaluation on its version: no new version
    evaluate_a = [*medseg, "evaluate", "models_a/model.pt", "prep", "split.json", "reports_a2"]
    _together([[*evaluate_a, "--run-file", "models_a/mlflow_run.json", "-p", "a.yaml"]], tmp_path, env)
    versions = client.search_model_versions("name='medseg-hippocampus'")
    [again] = [v for v in versions if v.run_id == runs["a"].info.run_id]
    assert len(versions) == 2 and len([k for k in again.tags if k.startswith("evaluation.")]) == 2
