"""The model description is typed and versioned: files of the first version still load, to the same network and
the same predictions; a damaged or foreign description is an error that names the file."""

import pytest
import torch

from pipeline.errors import ModelError
from pipeline.networks.description import FORMAT, ModelDescription
from pipeline.networks.model import build_network, describe, load_model
from tests.conftest import HIPPOCAMPUS_LABELS, MRI_PLAN


def _version_1(description: ModelDescription) -> dict:
    """A description as medseg-model/1 files hold it: params' whole inference section, no post-processing entry
    where training decided none, and (before planning) no configuration."""
    saved = description.to_saved()
    saved.update(format="medseg-model/1", inference={**saved["inference"], "largest_component": False})
    for key in ("postprocess", "configuration", "step_plan", "provenance"):
        saved.pop(key)
    return saved


def test_a_version_1_model_file_loads_to_the_same_network_and_predictions(tiny_params, tmp_path):
    description = describe(tiny_params, HIPPOCAMPUS_LABELS, "MRI", MRI_PLAN, tiny_params.train.patch_size)
    network = build_network(description.network).eval()
    torch.save({**_version_1(description), "state_dict": network.state_dict()}, tmp_path / "old.pt")
    loaded, upgraded = load_model(tmp_path / "old.pt")
    assert upgraded.format == FORMAT and upgraded.postprocess is None and upgraded.configuration is None
    assert upgraded.network == description.network and upgraded.inference == description.inference
    x = torch.randn(1, 1, *description.patch_size)
    assert torch.equal(loaded(x), network(x))


def test_a_version_1_post_processing_is_kept(tiny_params):
    description = describe(tiny_params, HIPPOCAMPUS_LABELS, "MRI", MRI_PLAN, tiny_params.train.patch_size)
    saved = {**_version_1(description), "postprocess": {"largest_component_classes": [2]}}
    assert ModelDescription.from_saved(saved, "old.pt").largest_component_classes == [2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "someone-else/3"}, "old.pt: not a medseg model .*found 'someone-else/3'"),
        ({"patch_size": "large"}, "old.pt: a damaged model description .*patch_size"),
        ({"unknown": 1}, "old.pt: a damaged model description .*unknown"),
    ],
)
def test_a_foreign_or_damaged_description_names_the_file(tiny_params, change, message):
    saved = describe(tiny_params, HIPPOCAMPUS_LABELS, "MRI", MRI_PLAN, tiny_params.train.patch_size).to_saved()
    with pytest.raises(ModelError, match=message):
        ModelDescription.from_saved({**saved, **change}, "old.pt")
