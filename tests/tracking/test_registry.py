"""The evaluate stage registers each run's model once and records every evaluation on it; the better one on the same
comparison key holds `champion`; a person's move of an alias is kept; URIs load the model."""

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

import pipeline.tracking.aliases as aliases
import pipeline.tracking.registry as registry_module
from pipeline.cli import app
from pipeline.data.preprocess import preprocess
from pipeline.data.split import split
from pipeline.errors import ModelError
from pipeline.networks.model import load_model, save_model
from pipeline.params import render_preset
from pipeline.provenance import provenance_tags
from pipeline.stages.evaluate import evaluate
from pipeline.stages.train import train as train_stage
from pipeline.tracking.listing import runs_table
from pipeline.tracking.models import local_model_file
from pipeline.tracking.offline import RunLog
from tests.conftest import HIPPOCAMPUS_FIXTURE, ROOT

# trainings, MLflow stores or Ray workers: `make test` runs these, `make test-fast` leaves them out
pytestmark = pytest.mark.slow


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
    train_stage(root / "prep", root / "split.json", root / "trained", params)
    trained = evaluate(
        root / "trained" / "model.pt",
        root / "prep",
        root / "split.json",
        root / "r1",
        root / "trained" / "mlflow_run.json",
    )
    # the second run: the same model file with its weights reset and its output biased to Anterior everywhere (no
    # better than chance, but not empty: an empty model is never registered)
    network, description = load_model(root / "trained" / "model.pt")
    for parameter in network.parameters():
        torch.nn.init.zeros_(parameter)
    with torch.no_grad():
        list(network.parameters())[-1].copy_(torch.tensor([0.0, 1.0, 0.0]))  # the last convolution's bias
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
    assert first.tags["registry.alias"] == "champion"
    assert first.tags["registry.reason"].startswith("the only version scored on comparison key")


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
        network, description = load_model(local_model_file(uri))
        assert description.labels["1"] == "Anterior"
        assert all(torch.equal(expected[k], v) for k, v in network.state_dict().items()), uri


def test_a_uri_that_does_not_resolve_is_an_error_naming_it(registry):
    with pytest.raises(ModelError, match="models:/medseg-hippocampus@nobody: does not resolve in MLflow"):
        local_model_file("models:/medseg-hippocampus@nobody")


def test_segment_takes_a_registry_uri(registry, tmp_path):
    root, *_ = registry
    image = HIPPOCAMPUS_FIXTURE / "imagesTr" / "hippocampus_252.nii.gz"
    result = CliRunner().invoke(
        app, ["segment", str(image), "-o", str(tmp_path), "--model", "models:/medseg-hippocampus@champion"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hippocampus_252.nii.gz").is_file()


def test_the_alias_target_depends_on_the_versions_and_the_moves_alone():
    v, targets = aliases.Version, aliases.targets
    a, b, c = v(1, 0.80, "k1"), v(2, 0.85, "k1"), v(3, 0.90, "k2")
    assert targets([a], None) == {"champion": 1}
    assert targets([a, b], None) == targets([a, b], 1) == {"champion": 2, "challenger": 1}
    # a better score on another comparison key does not take champion; it is the newest other version
    assert targets([a, b, c], 2) == {"champion": 2, "challenger": 3}
    assert targets([a, v(2, 0.80, "k1")], None) == {"champion": 1, "challenger": 2}, "ties: older"
    assert targets([v(1, None, "k1")], None) == {}
    # a person moved champion to version 1 when version 2 was the newest: kept, until a later version beats it
    moved = {"champion": aliases.Move(1, 2, "someone", "then")}
    assert targets([a, b], 1, moved) == {"champion": 1, "challenger": 2}
    assert targets([a, b, v(3, 0.79, "k1")], 1, moved)["champion"] == 1
    assert targets([a, b, v(3, 0.81, "k2")], 1, moved)["champion"] == 1, "another key does not take it"
    assert targets([a, b, v(3, 0.81, "k1")], 1, moved)["champion"] == 3


def test_aliases_a_stale_evaluation_moved_are_put_back(registry):
    """Two evaluations at once: one decided from an older view and moved the aliases after the other settled them;
    the next settling (the stale one's own check after its move) puts them where the versions say."""
    client = mlflow.MlflowClient()
    right = {
        a: str(client.get_model_version_by_alias("medseg-hippocampus", a).version) for a in ("champion", "challenger")
    }
    registry_module._place(client, "medseg-hippocampus", "champion", int(right["challenger"]))  # as medseg moves
    client.delete_registered_model_alias("medseg-hippocampus", "challenger")
    target, *_ = registry_module._settle(client, "medseg-hippocampus")
    now = {
        a: str(client.get_model_version_by_alias("medseg-hippocampus", a).version) for a in ("champion", "challenger")
    }
    assert now == right == {a: str(n) for a, n in target.items()}


def _versions_of(client, run_id):
    return client.search_model_versions(f"name='medseg-hippocampus' and run_id='{run_id}'")


def _run_beside(root, folder, model_file):
    """A new run of ``model_file`` (copied to ``folder``), as a training would leave it; its run file."""
    (root / folder).mkdir()
    shutil.copy(model_file, root / folder / "model.pt")
    run = RunLog(root / folder / "mlflow_pending", "medseg")
    run.set_tags(provenance_tags(root / "split.json"))
    (root / folder / "mlflow_run.json").write_text(json.dumps({"run_id": run.run_id, "experiment": "medseg"}))
    return root / folder / "mlflow_run.json"


def _evaluate(root, folder, out, **options):
    return evaluate(
        root / folder / "model.pt",
        root / "prep",
        root / "split.json",
        root / out,
        root / folder / "mlflow_run.json",
        **options,
    )


def test_evaluating_the_same_model_again_adds_evaluations_to_its_one_version(registry):
    root, trained, *_ = registry
    client = mlflow.MlflowClient()
    before = client.get_registered_model("medseg-hippocampus").aliases
    again = [_evaluate(root, "trained", f"again{n}") for n in (1, 2)]
    trained_run = json.loads((root / "trained" / "mlflow_run.json").read_text())["run_id"]
    [version] = _versions_of(client, trained_run)
    evaluations = [json.loads(v) for k, v in version.tags.items() if k.startswith("evaluation.")]
    assert len(evaluations) == 3 and {e["run"] for e in evaluations} == {trained_run}
    assert [e["score"] for e in evaluations] == pytest.approx([trained["dice_mean"]] + [a["dice_mean"] for a in again])
    assert version.tags["key.tta"] == "false" and len(version.tags["key.split"]) == 64
    assert client.get_registered_model("medseg-hippocampus").aliases == before


def test_a_score_with_tta_is_not_compared_with_one_without(registry):
    """The trained model again, in a run of its own evaluated with TTA: whatever its score, it does not take
    champion from the same model scored without TTA; it is challenger, and the tags say why."""
    root, *_ = registry
    _run_beside(root, "tta", root / "trained" / "model.pt")
    _evaluate(root, "tta", "r_tta", tta=True)
    client = mlflow.MlflowClient()
    tta_run = json.loads((root / "tta" / "mlflow_run.json").read_text())["run_id"]
    champion = client.get_model_version_by_alias("medseg-hippocampus", "champion")
    challenger = client.get_model_version_by_alias("medseg-hippocampus", "challenger")
    assert challenger.run_id == tta_run and champion.run_id != tta_run
    assert champion.tags["key.tta"] == "false" and challenger.tags["key.tta"] == "true"
    assert champion.tags["comparison_key"] != challenger.tags["comparison_key"]
    why = client.get_registered_model("medseg-hippocampus").tags["alias.challenger.why"]
    assert "not compared (differs in tta)" in why
    assert "differs in tta" in client.get_run(tta_run).data.tags["registry.reason"]
    listed = runs_table("medseg").set_index("id")
    assert "challenger: " in listed.loc[tta_run[:8], "why"] and "differs in tta" in listed.loc[tta_run[:8], "why"]


def test_a_hand_moved_alias_survives_a_worse_model_and_yields_to_a_better_comparable_one(registry):
    root, trained, worse, worse_run = registry
    client = mlflow.MlflowClient()
    [worse_version] = _versions_of(client, worse_run)
    moved = CliRunner().invoke(
        app, ["runs", "alias", "medseg-hippocampus", "champion", str(worse_version.version), "--note", "a test"]
    )
    assert moved.exit_code == 0, moved.output
    assert "moved here by" in moved.output

    # a worse model (no better than the one moved to) comes: the person's choice stays
    _run_beside(root, "worse_again", root / "worse" / "model.pt")
    _evaluate(root, "worse_again", "r_worse_again")
    champion = client.get_model_version_by_alias("medseg-hippocampus", "champion")
    assert champion.version == worse_version.version
    model = client.get_registered_model("medseg-hippocampus")
    record = json.loads(model.tags["alias.champion.moved_by_hand"])
    assert (
        record["version"] == int(worse_version.version) and record["by"] and record["at"] and record["note"] == "a test"
    )
    assert model.tags["alias.champion.why"].startswith("moved here by")

    # a better one on the same comparison key comes: it takes champion, and says whom it beat
    better_file = _run_beside(root, "better", root / "trained" / "model.pt")
    _evaluate(root, "better", "r_better")
    better_run = json.loads(better_file.read_text())["run_id"]
    champion = client.get_model_version_by_alias("medseg-hippocampus", "champion")
    assert champion.run_id == better_run
    why = client.get_registered_model("medseg-hippocampus").tags["alias.champion.why"]
    assert f"beats version {worse_version.version}'s" in why


def test_an_alias_moved_outside_medseg_is_found_and_kept_as_a_persons_choice(registry):
    """Moved in the MLflow UI (or with MLflow's API), not with `medseg runs alias`: the next evaluation finds it,
    records who it can (someone outside medseg) and keeps it, as it keeps a move made with medseg."""
    root, *_ = registry
    client = mlflow.MlflowClient()
    model = "medseg-hippocampus"
    champion = int(client.get_model_version_by_alias(model, "champion").version)
    never_champion = [
        int(v.version)
        for v in client.search_model_versions(f"name='{model}'")
        if "alias.champion.placed" not in v.tags and "eval_dice_mean" in v.tags and int(v.version) != champion
    ]
    assert never_champion, "the registry fixture has a scored version medseg never made champion"
    client.set_registered_model_alias(model, "champion", str(never_champion[0]))  # as the MLflow UI does

    _run_beside(root, "after_outside_move", root / "worse" / "model.pt")
    _evaluate(root, "after_outside_move", "r_after_outside_move")
    assert int(client.get_model_version_by_alias(model, "champion").version) == never_champion[0]
    tags = client.get_registered_model(model).tags
    record = json.loads(tags["alias.champion.moved_by_hand"])
    assert record["version"] == never_champion[0] and record["by"] == registry_module.OUTSIDE
    assert tags["alias.champion.why"].startswith(f"moved here by {registry_module.OUTSIDE}")


def test_a_model_with_non_finite_weights_is_never_registered(registry):
    root, *_ = registry
    network, description = load_model(root / "trained" / "model.pt")
    with torch.no_grad():
        next(network.parameters()).fill_(float("nan"))
    run = RunLog(root / "nan" / "mlflow_pending", "medseg")
    client = mlflow.MlflowClient()
    before = len(client.search_model_versions("name='medseg-hippocampus'"))
    with pytest.raises(ModelError, match="NaN or infinite"):
        registry_module.register(
            run, network, root / "trained" / "model.pt", description.patch_size, "medseg-hippocampus", 0.99, {}
        )
    assert len(client.search_model_versions("name='medseg-hippocampus'")) == before
