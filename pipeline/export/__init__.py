"""``medseg export``: a trained model in the forms other tools run, so that it can leave the pipeline.

``bundle`` is a MONAI bundle (MONAI Label, MONAI Deploy, ``python -m monai.bundle run``) that
prepares, infers and writes labels as ``medseg segment`` does; ``torchscript`` and ``onnx`` are
the network alone, with the model description beside it as ``model.json``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.export.bundle import write_bundle
from pipeline.export.network import write_onnx, write_torchscript
from pipeline.networks.model import load_model

WRITERS = {"bundle": write_bundle, "torchscript": write_torchscript, "onnx": write_onnx}


def export(model_path: Path | str, fmt: str, out: Path | str) -> list[Path]:
    """Write the model at ``model_path`` (a model file or a bundle) to the folder ``out``; returns the files written."""
    if fmt not in WRITERS:
        raise ConfigError(f"--format '{fmt}': unknown export format; choose one of {', '.join(WRITERS)}")
    network, description = load_model(model_path)
    return WRITERS[fmt](network, description, Path(out))
