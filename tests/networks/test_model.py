import pytest
import torch

from pipeline.config import Params
from pipeline.errors import ConfigError
from pipeline.networks.model import ModelError, build_network, describe, load_model, network_spec, save_model
from tests.conftest import HIPPOCAMPUS_LABELS, MRI_PLAN


def test_the_model_file_carries_what_inference_needs(tiny_params, tmp_path):
    description = describe(tiny_params, HIPPOCAMPUS_LABELS, "MRI", MRI_PLAN, tiny_params.train.patch_size)
    network = build_network(description.network)
    save_model(tmp_path / "model.pt", network, description)
    # weights_only: the file holds tensors and plain types only
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["format"] == "medseg-model/2" and raw["labels"]["2"] == "Posterior"
    loaded, description = load_model(tmp_path / "model.pt")
    assert description.patch_size == [32, 48, 32] and "state_dict" not in description.to_saved()
    x = torch.randn(1, 1, 32, 48, 32)
    network.eval()
    assert torch.equal(loaded(x), network(x))


def test_unusable_model_files_are_named(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="junk.pt: not a readable model file"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match="foreign.pt: not a medseg model"):
        load_model(tmp_path / "foreign.pt")


@pytest.mark.parametrize(
    ("network", "channels", "extra"),
    [
        ("unet", [4, 8, 16], {}),
        ("dynunet", [4, 8, 16], {"deep_supervision": True}),
        ("basicunet", [4, 4, 8, 8, 16], {}),
    ],
)
def test_every_network_maps_a_patch_to_class_logits(network, channels, extra):
    params = Params.model_validate({"train": {"network": network, "channels": channels, **extra}})
    model = build_network(network_spec(params, n_classes=3))
    x = torch.randn(2, 1, 32, 32, 16)
    model.eval()
    assert model(x).shape == (2, 3, 32, 32, 16)
    if extra.get("deep_supervision"):
        model.train()
        assert model(x).shape[:3] == (2, 2, 3), "the main output and one supervised head, stacked"


def test_basicunet_needs_five_levels():
    params = Params.model_validate({"train": {"network": "basicunet", "channels": [4, 8, 16]}})
    with pytest.raises(ConfigError, match="basicunet takes 5 channel counts"):
        network_spec(params, n_classes=3)
