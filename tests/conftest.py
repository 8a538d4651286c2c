from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import create_test_image_3d

from pipeline.config import Params
from pipeline.model import build_network, describe, save_model

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
    save_model(tmp_path / "untrained.pt", build_network(description["network"]), description)
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
