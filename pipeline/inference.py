"""Sliding-window prediction, and mapping it back onto the input's own voxel grid."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer, sliding_window_inference

from pipeline.transforms import IMAGE, prepare


def sliding_window_logits(network: torch.nn.Module, images: torch.Tensor, description: dict[str, Any]) -> torch.Tensor:
    """Logits for a batch of prepared images, tiled with Gaussian-weighted overlapping patches
    (2D patches on each slice, where a 2D network was trained on slices of volumes)."""
    options = {"roi_size": description["patch_size"], "sw_batch_size": description["inference"]["sw_batch_size"]}
    options.update(overlap=description["inference"]["overlap"], mode="gaussian")
    with torch.inference_mode():
        if description.get("slice_axis") is not None:  # a 2D network over a volume, slice by slice
            return SliceInferer(spatial_dim=description["slice_axis"], progress=False, **options)(images, network)
        return sliding_window_inference(images, predictor=network, **options)


def predict(network: torch.nn.Module, description: dict[str, Any], image: MetaTensor, device: torch.device) -> np.ndarray:
    """Label map (uint8) indexed like ``image`` (channel-first, as read), whatever preparation did in between."""
    preparation = prepare(description["preprocess"], (IMAGE,))
    prepared = preparation({IMAGE: image})[IMAGE]
    logits = sliding_window_logits(network, prepared[None].to(device), description)[0]
    probabilities = MetaTensor(torch.softmax(logits, 0).cpu(), meta=prepared.meta, applied_operations=prepared.applied_operations)
    # resample probabilities, not labels, back to the input grid; then take the most likely class
    restored = preparation.inverse({IMAGE: probabilities})[IMAGE]
    return torch.argmax(restored, dim=0).numpy().astype(np.uint8)
