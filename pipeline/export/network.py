"""The network alone, as TorchScript or ONNX, with the model description beside it (``model.json``).

The exported network maps a batch of prepared patches to logits; ``model.json`` says how to
prepare a volume (``preprocess``), tile it (``patch_size``, ``inference``) and name the classes
(``labels``, ``label_values``). MONAI's networks take any patch whose sides are multiples of their
downsampling (dynamic spatial axes); the U-Net of the paper is exported for its own tile size.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import ModelError
from pipeline.files import atomic_path, write_json
from pipeline.networks.description import ModelDescription

DESCRIPTION_FILE = "model.json"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
AXIS_NAMES = ("x", "y", "z")


def _example(description: ModelDescription) -> torch.Tensor:
    return torch.zeros(1, description.network.in_channels, *description.patch_size)


def _dynamic_spatial(network: torch.nn.Module) -> bool:
    """MONAI's networks are fully convolutional with padded convolutions; the paper's U-Net crops by its input size."""
    return type(network).__module__.startswith("monai.")


def _interface(network: torch.nn.Module, description: ModelDescription, fmt: str, file: str) -> dict[str, Any]:
    spec = description.network
    if _dynamic_spatial(network):
        spatial_in = spatial_out = list(AXIS_NAMES[: spec.spatial_dims])
        tiling = "a Gaussian-weighted sliding window of 'patch_size' with 'inference.overlap'"
    else:
        with torch.no_grad():
            spatial_in, spatial_out = list(description.patch_size), list(network(_example(description)).shape[2:])
        tiling = "overlap-tiles: output tiles without overlap, each input tile with its context, mirrored at the border"
    return {
        **description.to_saved(),
        "export": {
            "format": fmt,
            "file": file,
            "input": {"name": INPUT_NAME, "shape": ["batch", spec.in_channels, *spatial_in], "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", spec.out_channels, *spatial_out], "dtype": "float32"},
            "use": f"prepare the volume as 'preprocess' says, tile it with {tiling}, softmax, map the probabilities "
            "back onto the input grid, argmax; class i is written as label_values[i]",
        },
    }


def write_torchscript(network: torch.nn.Module, description: ModelDescription, out: Path) -> list[Path]:
    """Scripted where the network allows (any patch size), else traced at its patch size."""
    network = network.cpu().eval()
    with warnings.catch_warnings():  # TorchScript's deprecation notice and tracer notes are not the user's concern
        warnings.simplefilter("ignore")
        if _dynamic_spatial(network):
            compiled = torch.jit.script(network)
        else:
            with torch.no_grad():
                compiled = torch.jit.trace(network, _example(description))
    written = [out / "model.ts", out / DESCRIPTION_FILE]
    with atomic_path(written[0]) as tmp:
        torch.jit.save(compiled, str(tmp))
    write_json(written[1], _interface(network, description, "torchscript", written[0].name))
    return written


def write_onnx(network: torch.nn.Module, description: ModelDescription, out: Path) -> list[Path]:
    """TorchScript-based ONNX export (seconds, where the dynamo exporter takes tens of seconds for a small U-Net)."""
    try:
        import onnx  # noqa: F401  (the exporter needs it; say so here rather than deep inside torch)
    except ImportError:
        raise ModelError("ONNX export needs the onnx package: pip install 'medseg[export]'") from None
    network = network.cpu().eval()
    dims = description.network.spatial_dims
    axes = {0: "batch", **({2 + i: AXIS_NAMES[i] for i in range(dims)} if _dynamic_spatial(network) else {})}
    written = [out / "model.onnx", out / DESCRIPTION_FILE]
    with atomic_path(written[0]) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (_example(description),),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            dynamo=False,
        )
    write_json(written[1], _interface(network, description, "onnx", written[0].name))
    return written
