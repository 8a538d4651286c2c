from pathlib import Path

import pytest
import yaml

from pipeline.config import Params
from pipeline.errors import ConfigError
from pipeline.params import flatten, load_params, params_yaml, render_preset
from tests.conftest import ROOT


def test_committed_params_yaml_is_the_rendered_hippocampus_preset():
    """params.yaml is generated; this keeps it from drifting from the defaults and the preset."""
    assert load_params(ROOT / "params.yaml") == render_preset(ROOT / "configs" / "hippocampus_3d.yaml")
    assert (ROOT / "params.yaml").read_text() == params_yaml(render_preset(ROOT / "configs" / "hippocampus_3d.yaml"))


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_is_valid(preset: Path):
    render_preset(preset)


def test_a_preset_overrides_only_what_it_names(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  epochs: 3\n  augmentation:\n    flip_prob: 0\n")
    params = render_preset(preset)
    assert params.train.epochs == 3
    assert params.train.augmentation.flip_prob == 0
    assert params.train.augmentation.elastic_prob == Params().train.augmentation.elastic_prob
    assert params.train.channels == Params().train.channels


def test_an_unknown_key_is_named_with_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"epoch": 3}}))
    with pytest.raises(ConfigError, match=r"params.yaml: train.epoch: Extra inputs"):
        load_params(params)


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_flatten_uses_dotted_keys():
    flat = flatten(Params())
    assert flat["train.learning_rate"] == Params().train.learning_rate
    assert flat["train.augmentation.elastic_prob"] == Params().train.augmentation.elastic_prob
    assert "train" not in flat


def test_set_overrides_take_yaml_values_and_are_checked():
    params = render_preset(
        ROOT / "configs" / "smoke.yaml", ["train.epochs=7", "train.patch_size=[16, 16, 16]", "data.source=/x"]
    )
    assert params.train.epochs == 7 and params.train.patch_size == [16, 16, 16] and params.data.source == "/x"
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        render_preset(ROOT / "configs" / "smoke.yaml", ["train.epochs"])
    with pytest.raises(ConfigError, match="train.epochs: Input should be a valid integer"):
        render_preset(ROOT / "configs" / "smoke.yaml", ["train.epochs=many"])
