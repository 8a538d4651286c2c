"""Params files: ``params.yaml`` read and checked against the typed config, presets overlaid on the defaults,
``--set KEY=VALUE`` overrides, and the YAML and dotted forms that DVC and MLflow keep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.config import Params
from pipeline.errors import ConfigError


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return content


def _validate(content: dict[str, Any], path: Path) -> Params:
    try:
        return Params.model_validate(content)
    except ValidationError as err:
        problems = "; ".join(": ".join(filter(None, [".".join(map(str, e["loc"])), e["msg"]])) for e in err.errors())
        raise ConfigError(f"{path}: {problems}") from None


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    return _validate(_read_yaml(path), path)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _override(assignment: str) -> dict[str, Any]:
    """``train.epochs=5`` as the nested mapping it stands for; the value is read as YAML."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set '{assignment}': expected KEY=VALUE, e.g. train.epochs=5")
    nested: Any = yaml.safe_load(value)
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def render_preset(preset: Path | str, overrides: list[str] = ()) -> Params:
    """The defaults overlaid with a preset's (partial) values, then with ``KEY=VALUE`` overrides."""
    preset = Path(preset)
    content = _deep_merge(Params().model_dump(), _read_yaml(preset))
    for assignment in overrides:
        content = _deep_merge(content, _override(assignment))
    return _validate(content, preset)


def with_overrides(params: Params, overrides: list[str]) -> Params:
    """``params`` with ``KEY=VALUE`` assignments applied (empty ones ignored)."""
    content = params.model_dump()
    for assignment in filter(None, (a.strip() for a in overrides)):
        content = _deep_merge(content, _override(assignment))
    return _validate(content, Path("--set"))


def params_yaml(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(), sort_keys=False)


def flatten(params: Params) -> dict[str, Any]:
    """Dotted keys (``train.learning_rate``), as MLflow and ``dvc exp run -S`` name them."""

    def walk(prefix: str, node: Any) -> dict[str, Any]:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                out.update(walk(f"{prefix}.{key}" if prefix else key, value))
            return out
        return {prefix: node}

    return walk("", params.model_dump())
