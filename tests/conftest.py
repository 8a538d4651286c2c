from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from monai.data import create_test_image_3d

from pipeline.config import Params
from pipeline.networks.model import build_network, describe, save_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
HIPPOCAMPUS_FIXTURE = FIXTURES / "hippocampus"
SHARED = ROOT.parent / "shared" / "datasets"

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets is not beside this checkout")


@pytest.fixture
def hippocampus(tmp_path: Path) -> Path:
    """A writable copy of the six real fixture cases, in MSD layout."""
    target = tmp_path / "hippocampus"
    shutil.copytree(HIPPOCAMPUS_FIXTURE, target)
    return target


@pytest.fixture
def tiny_params() -> Params:
    """Small enough to train in seconds on a CPU."""
    return Params.model_validate(
        {
            "preprocess": {"workers": 1},
            "split": {"n_folds": 2},
            "train": {
                "channels": [4, 8, 16],
                "num_res_units": 1,
                "patch_size": [32, 48, 32],
                "batch_size": 2,
                "epochs": 2,
                "val_every": 1,
                "amp": False,  # nothing for the probe to choose: two runs compared weight for weight agree
                "compile": False,
            },
        }
    )


HIPPOCAMPUS_LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}
MRI_PLAN = {
    "orientation": "RAS",
    "spacing": [1.0, 1.0, 1.0],
    "crop_foreground": True,
    "intensity": {"scheme": "zscore"},
}


@pytest.fixture
def untrained_model(tiny_params, tmp_path) -> Path:
    """A complete model file with random weights: enough wherever the geometry, not the accuracy, is tested."""
    description = describe(tiny_params, HIPPOCAMPUS_LABELS, "MRI", MRI_PLAN, tiny_params.train.patch_size)
    save_model(tmp_path / "untrained.pt", build_network(description.network), description)
    return tmp_path / "untrained.pt"


def write_volume(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def synthetic_pair(shape=(40, 48, 36), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Spheres labelled 1 and 2 from MONAI's test-image generator; the image is bright (~1000) inside them."""
    random = np.random.RandomState(seed)
    _, label = create_test_image_3d(*shape, num_objs=4, rad_max=8, num_seg_classes=2, random_state=random)
    image = 1000.0 * (label > 0) + random.uniform(0, 100, shape)
    return image.astype(np.float32), label.astype(np.uint8)


def smoke_project(repo: Path, env: dict[str, str]) -> None:
    """Make ``repo`` a git and DVC repository of the pipeline, configured with the smoke preset on the
    fixture cases; nothing is committed or run yet."""
    import subprocess
    import sys

    repo.mkdir(parents=True, exist_ok=True)
    for item in ("dvc.yaml", "pipeline", "configs"):
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, repo / item)
    for args in (
        ("git", "init", "-q"),
        (sys.executable, "-m", "dvc", "init", "-q"),
        (sys.executable, "-m", "pipeline", "configure", "configs/smoke.yaml"),
    ):
        result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["source"] = str(HIPPOCAMPUS_FIXTURE)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A git repository of the pipeline in which `dvc repro` ran the smoke preset once, logging to its own
    ``mlflow.db``: (repository, environment for subprocesses, the run's id). Shared by the audit tests."""
    repo = tmp_path_factory.mktemp("smoke_run") / "repo"
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    smoke_project(repo, env)

    def run(*args):
        result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"

    (repo / ".gitignore").write_text("mlflow.db\n__pycache__/\n")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke project")
    run(sys.executable, "-m", "dvc", "repro")
    return repo, env, json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"]
