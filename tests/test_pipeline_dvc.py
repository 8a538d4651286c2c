"""The whole product as a user runs it: `dvc repro` in a git repository, on the smoke preset."""

import json
import os
import re
import subprocess
import sys

import mlflow
import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.conftest import HIPPOCAMPUS_FIXTURE, smoke_project

pytestmark = pytest.mark.slow


def run(*args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    repo = tmp_path_factory.mktemp("project")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    dvc = (sys.executable, "-m", "dvc")
    smoke_project(repo, env)
    (repo / ".gitignore").write_text("mlflow.db\n__pycache__/\n")
    run("git", "add", "-A", cwd=repo, env=env)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke project", cwd=repo, env=env)
    first = run(*dvc, "repro", cwd=repo, env=env)
    return repo, env, dvc, first


def test_repro_runs_every_stage_and_leaves_model_metrics_and_plots(project):
    repo, _, _, first = project
    assert stages_run(first) == {"acquire", "preprocess", "split", "train", "evaluate"}
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["n_cases"] == 3 and 0 <= metrics["dice_mean"] <= 1
    assert (repo / "models" / "model.pt").is_file() and (repo / "reports" / "report.html").is_file()
    assert (repo / "dvc.lock").is_file()


def test_the_run_is_in_mlflow_with_provenance(project):
    repo, *_ = project
    run_id = json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    logged = mlflow.get_run(run_id)
    assert {"train_loss", "val_dice_mean", "eval_dice_mean", "eval_dice_Anterior"} <= set(logged.data.metrics)
    assert logged.data.params["train.epochs"] == "2"
    assert re.fullmatch(r"[0-9a-f]{40}", logged.data.tags["mlflow.source.git.commit"])
    raw_hash = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["acquire"]["outs"][0]["md5"]
    assert logged.data.tags["dvc.raw_data_md5"] == raw_hash
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"model", "evaluation", "history.csv", "data"} <= artifacts
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "data")} == {
        "data/fingerprint.json",
        "data/plan.json",
        "data/validation.csv",
    }


def test_segment_writes_labels_on_the_grid_of_an_unseen_case(project, tmp_path):
    repo, env, _, _ = project
    unseen = tmp_path / "unseen.nii.gz"
    source = nib.load(HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_252.nii.gz")
    affine = np.diag([-1.0, 1.0, 1.0, 1.0]) @ source.affine  # mirrored so that no file like it was seen
    nib.save(nib.Nifti1Image(np.asanyarray(source.dataobj)[::-1], affine), unseen)
    run(sys.executable, "-m", "pipeline", "segment", str(unseen), "-o", str(tmp_path / "out"), cwd=repo, env=env)
    written = nib.load(tmp_path / "out" / "unseen.nii.gz")
    assert written.shape == nib.load(unseen).shape
    np.testing.assert_array_equal(written.affine, nib.load(unseen).affine)


def test_nothing_changed_means_nothing_runs_and_a_train_param_reruns_train_and_evaluate(project):
    repo, env, dvc, _ = project
    assert stages_run(run(*dvc, "repro", cwd=repo, env=env)) == set()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(run(*dvc, "repro", cwd=repo, env=env)) == {"train", "evaluate"}
