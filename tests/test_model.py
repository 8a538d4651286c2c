import pytest
import torch

from pipeline.model import ModelError, build_network, describe, load_model, save_model
from tests.conftest import HIPPOCAMPUS_LABELS, MRI_PLAN


def test_the_model_file_carries_what_inference_needs(tiny_params, tmp_path):
    description = describe(tiny_params, HIPPOCAMPUS_LABELS, "MRI", MRI_PLAN, tiny_params.train.patch_size)
    network = build_network(description["network"])
    save_model(tmp_path / "model.pt", network, description)
    # weights_only: the file holds tensors and plain types only
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["format"] == "medseg-model/1" and raw["labels"]["2"] == "Posterior"
    loaded, description = load_model(tmp_path / "model.pt")
    assert description["patch_size"] == [32, 48, 32] and "state_dict" not in description
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
