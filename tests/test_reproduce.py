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
    return repo, run_id


def test_a_cpu_run_is_reproduced_bit_for_bit_from_its_commit_and_data(in_smoke_repo, tmp_path):
    repo, run_id = in_smoke_repo
    result = CliRunner().invoke(app, ["reproduce", run_id[:8], "--workdir", str(tmp_path), "--tolerance", "0"])
    assert result.exit_code == 0, result.output
    assert "reproduced: every metric within 0" in result.output
    worktree = tmp_path / "repo"
    assert (worktree / "models" / "model.pt").is_file() and (worktree / "data" / "raw").is_dir()
    assert "eval_dice_mean" in result.output and "val_dice_mean" in result.output
    # the reproduction is itself a run, of the same commit
    runs = mlflow.search_runs(experiment_names=["medseg"], output_format="list")
    commits = {r.data.tags["mlflow.source.git.commit"] for r in runs}
    assert len(runs) == 2 and len(commits) == 1


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
