"""The evaluate stage registers each model; the better one on the same split holds `champion`; URIs load it."""

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

import pipeline.tracking.registry as registry_module
import pipeline.train as training
from pipeline.cli import app
from pipeline.config import render_preset
from pipeline.errors import ModelError
from pipeline.evaluate import evaluate
from pipeline.model import load_model, save_model
from pipeline.preprocess import preprocess
from pipeline.split import split
from pipeline.tracking.offline import RunLog
from pipeline.tracking.provenance import provenance_tags
from tests.conftest import HIPPOCAMPUS_FIXTURE, ROOT


@pytest.fixture(scope="module")
def registry(tmp_path_factory, smoke):
    """A trained run evaluated first, then an untrained model's run evaluated on the same split."""
    root = tmp_path_factory.mktemp("registry")
    patch = pytest.MonkeyPatch()
    patch.chdir(root)
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    params, hippocampus = smoke
    preprocess(hippocampus, root / "prep", params.data, params.preprocess)
    split(root / "prep" / "manifest.csv", root / "split.json", params.split, params.seed)
    training.train(root / "prep", root / "split.json", root / "trained", params)
    trained = evaluate(
        root / "trained" / "model.pt",
        root / "prep",
        root / "split.json",
        root / "r1",
        root / "trained" / "mlflow_run.json",
    )
    # the second run: the same model file with its weights reset (no better than chance)
    network, description = load_model(root / "trained" / "model.pt")
    for parameter in network.parameters():
        torch.nn.init.zeros_(parameter)
    (root / "worse").mkdir()
    save_model(root / "worse" / "model.pt", network, description)
    run = RunLog(root / "worse" / "mlflow_pending", "medseg")
    run.set_tags(provenance_tags(root / "split.json"))
    (root / "worse" / "mlflow_run.json").write_text(json.dumps({"run_id": run.run_id, "experiment": "medseg"}))
    worse = evaluate(
        root / "worse" / "model.pt", root / "prep", root / "split.json", root / "r2", root / "worse" / "mlflow_run.json"
    )
    yield root, trained, worse, run.run_id
    patch.undo()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke preset's params (the tiny network) and a writable copy of the fixture cases."""
    target = tmp_path_factory.mktemp("data") / "hippocampus"
    shutil.copytree(HIPPOCAMPUS_FIXTURE, target)
    return render_preset(ROOT / "configs" / "smoke.yaml", [f"data.source={target}"]), target


def test_the_first_model_is_champion_and_a_worse_one_challenger_with_both_scores_logged(registry):
    root, trained, worse, worse_run = registry
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("medseg-hippocampus", "champion")
    challenger = client.get_model_version_by_alias("medseg-hippocampus", "challenger")
    trained_run = json.loads((root / "trained" / "mlflow_run.json").read_text())["run_id"]
    assert champion.run_id == trained_run and challenger.run_id == worse_run
    assert worse["dice_mean"] < trained["dice_mean"]
    logged = client.get_run(worse_run).data
    assert logged.tags["registry.alias"] == "challenger" and "does not beat" in logged.tags["registry.reason"]
    assert logged.metrics["registry.score"] == pytest.approx(worse["dice_mean"])
    assert logged.metrics["registry.champion_score"] == pytest.approx(trained["dice_mean"])
    first = client.get_run(trained_run).data
    assert first.tags["registry.alias"] == "champion" and first.tags["registry.reason"] == "no champion yet"


def test_the_registered_model_is_an_mlflow_model_with_signature_carrying_model_pt(registry):
    root, *_ = registry
    info = mlflow.models.get_model_info("models:/medseg-hippocampus@champion")
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 1, 32, 48, 32)
    assert tuple(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 32, 48, 32)
    assert info.saved_input_example_info is not None
    network = mlflow.pytorch.load_model("models:/medseg-hippocampus@champion")
    assert isinstance(network, torch.nn.Module)
    files = mlflow.artifacts.download_artifacts("models:/medseg-hippocampus@champion")
    assert (root / "trained" / "model.pt").read_bytes() in [p.read_bytes() for p in Path(files).rglob("model.pt")]


def test_models_and_runs_uris_load_the_self_describing_model(registry):
    root, *_ = registry
    expected = load_model(root / "trained" / "model.pt")[0].state_dict()
    trained_run = json.loads((root / "trained" / "mlflow_run.json").read_text())["run_id"]
    for uri in ("models:/medseg-hippocampus@champion", f"runs:/{trained_run}/model"):
        network, description = load_model(uri)
        assert description["labels"]["1"] == "Anterior"
        assert all(torch.equal(expected[k], v) for k, v in network.state_dict().items()), uri


def test_a_uri_that_does_not_resolve_is_an_error_naming_it(registry):
    with pytest.raises(ModelError, match="models:/medseg-hippocampus@nobody: does not resolve in MLflow"):
        load_model("models:/medseg-hippocampus@nobody")


def test_segment_takes_a_registry_uri(registry, tmp_path):
    root, *_ = registry
    image = HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_252.nii.gz"
    result = CliRunner().invoke(
        app, ["segment", str(image), "-o", str(tmp_path), "--model", "models:/medseg-hippocampus@champion"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hippocampus_252.nii.gz").is_file()


def test_the_alias_target_depends_on_the_versions_alone():
    v = registry_module._Version
    a, b, c = v(1, "a", 0.80, "s1"), v(2, "b", 0.85, "s1"), v(3, "c", 0.90, "s2")
    assert registry_module._target([a], None) == {"champion": 1}
    assert (
        registry_module._target([a, b], None) == registry_module._target([a, b], 1) == {"champion": 2, "challenger": 1}
    )
    # a better score on another split does not take champion; it is the newest other version
    assert registry_module._target([a, b, c], 2) == {"champion": 2, "challenger": 3}
    assert registry_module._target([a, v(2, "b", 0.80, "s1")], None) == {"champion": 1, "challenger": 2}, "ties: older"
    assert registry_module._target([v(1, "a", None, "s1")], None) == {}


def test_aliases_a_stale_evaluation_moved_are_put_back(registry):
    """Two evaluations at once: one decided from an older view and moved the aliases after the other settled them;
    the next settling (the stale one's own check after its move) puts them where the versions say."""
    client = mlflow.MlflowClient()
    right = {
        a: str(client.get_model_version_by_alias("medseg-hippocampus", a).version) for a in ("champion", "challenger")
    }
    client.set_registered_model_alias("medseg-hippocampus", "champion", right["challenger"])
    client.delete_registered_model_alias("medseg-hippocampus", "challenger")
    target, _ = registry_module._settle(client, "medseg-hippocampus")
    now = {
        a: str(client.get_model_version_by_alias("medseg-hippocampus", a).version) for a in ("champion", "challenger")
    }
    assert now == right == {a: str(n) for a, n in target.items()}
