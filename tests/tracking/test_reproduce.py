"""`medseg reproduce RUN_ID` on a real smoke run: its commit, its data, dvc repro, the same metrics."""

import mlflow
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.tracking.reproduce import ReproduceError, reproduce

pytestmark = pytest.mark.slow


@pytest.fixture
def in_smoke_repo(smoke_run, monkeypatch):
    repo, env, run_id = smoke_run
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    # an earlier test in this process may have set MLflow's URI, which outranks the variable
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return repo, run_id


def _registry(client):
    """Every registered model's versions (with their tags), aliases and tags."""
    models = client.search_registered_models()
    versions = sorted(
        (v.name, v.version, v.run_id, tuple(sorted(v.tags.items()))) for v in client.search_model_versions()
    )
    return versions, [(m.name, m.aliases, m.tags) for m in models]


def test_a_cpu_run_is_reproduced_bit_for_bit_from_its_commit_and_data(in_smoke_repo, tmp_path):
    repo, run_id = in_smoke_repo
    client = mlflow.MlflowClient()
    registry = _registry(client)
    assert registry[0], "the smoke run registered its model"
    result = CliRunner().invoke(app, ["reproduce", run_id[:8], "--workdir", str(tmp_path), "--tolerance", "0"])
    assert result.exit_code == 0, result.output
    assert "reproduced: every metric within 0" in result.output
    worktree = tmp_path / "repo"
    assert (worktree / "models" / "model.pt").is_file() and (worktree / "data" / "raw").is_dir()
    assert "eval_dice_mean" in result.output and "val_dice_mean" in result.output
    # the run's store and its registry are as they were; the reproduction is a run of the same commit in its own store
    assert _registry(client) == registry
    [logged] = mlflow.search_runs(experiment_names=["medseg"], output_format="list")
    own = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [reproduced] = own.search_runs([own.get_experiment_by_name("medseg").experiment_id])
    commit = "mlflow.source.git.commit"
    assert logged.info.run_id == run_id and reproduced.data.tags[commit] == logged.data.tags[commit]
    assert own.search_registered_models() == [], "a reproduction registers nothing"


def test_a_reproduction_into_a_named_store_registers_nothing_there(in_smoke_repo, tmp_path):
    """Named on the command line, the run's own store takes the reproduction's run; its evaluation registers nothing."""
    _, run_id = in_smoke_repo
    client = mlflow.MlflowClient()
    registry, runs = _registry(client), len(mlflow.search_runs(experiment_names=["medseg"], output_format="list"))
    store = mlflow.get_tracking_uri()
    result = CliRunner().invoke(app, ["reproduce", run_id, "--workdir", str(tmp_path), "--tracking-uri", store])
    assert result.exit_code == 0, result.output
    assert len(mlflow.search_runs(experiment_names=["medseg"], output_format="list")) == runs + 1
    assert _registry(client) == registry


def test_a_run_made_with_uncommitted_changes_is_refused_with_the_reason(in_smoke_repo):
    _, run_id = in_smoke_repo
    client = mlflow.MlflowClient()
    client.set_tag(run_id, "git.dirty", "true")
    try:
        with pytest.raises(ReproduceError, match="uncommitted changes"):
            reproduce(run_id)
    finally:
        client.set_tag(run_id, "git.dirty", "false")


def test_data_that_is_nowhere_is_refused_with_the_reason(in_smoke_repo, tmp_path, monkeypatch):
    repo, run_id = in_smoke_repo
    cache = repo / ".dvc" / "cache"
    cache.rename(repo / "cache-elsewhere")
    try:
        with pytest.raises(ReproduceError, match="data/raw with DVC hash .* is neither in the cache"):
            reproduce(run_id, workdir=tmp_path)
    finally:
        (repo / "cache-elsewhere").rename(cache)
