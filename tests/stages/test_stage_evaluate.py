"""The evaluate stage's registration kept for `medseg runs sync`: also one written by a medseg from before
comparison keys (it recorded the validation split's hash alone) is registered, with what is not known saying so."""

import json
import shutil

import mlflow
import pytest

from pipeline.stages.evaluate import DEFERRED
from pipeline.tracking.registry import REGISTER_OP

pytestmark = pytest.mark.slow  # an MLflow store and a registered PyTorch model: seconds


def test_a_registration_kept_before_comparison_keys_is_carried_out_by_sync(untrained_model, tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    client = mlflow.MlflowClient(store)  # not MLflow's process-wide URI, which an earlier test may have set
    run_id = client.create_run(client.create_experiment("medseg")).info.run_id
    pending = tmp_path / "mlflow_pending"
    (pending / "files").mkdir(parents=True)
    shutil.copy(untrained_model, pending / "files" / "model.pt")
    old_op = {  # as the medseg of commit 19466f0^ kept it (no key, no evaluated_at)
        "op": REGISTER_OP,
        "name": "medseg-legacy",
        "score": 0.5,
        "split": "abc123",
        "patch_size": [32, 48, 32],
        "experiment": "medseg",
        "files": ["files/model.pt"],
    }
    DEFERRED[REGISTER_OP](run_id, old_op, pending)
    [version] = client.search_model_versions("name='medseg-legacy'")
    assert version.tags["key.split"] == "abc123" and version.tags["key.data"].startswith("unknown")
    assert version.tags["key.tta"].startswith("unknown") and len(version.tags["key.plan"]) == 16
    assert client.get_model_version_by_alias("medseg-legacy", "champion").version == version.version
    [record] = [json.loads(v) for k, v in version.tags.items() if k.startswith("evaluation.")]
    assert record["score"] == 0.5 and record["run"] == run_id
