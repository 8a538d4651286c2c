"""Sliding-window prediction, and mapping it back onto the input's own voxel grid."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer, sliding_window_inference

from pipeline.transforms import IMAGE, prepare
from pipeline.unet_paper import overlap_tile_logits


def sliding_window_logits(network: torch.nn.Module, images: torch.Tensor, description: dict[str, Any]) -> torch.Tensor:
    """Logits for a batch of prepared images, tiled with Gaussian-weighted overlapping patches
    (2D patches on each slice, where a 2D network was trained on slices of volumes); the U-Net
    of the paper tiles its own way (overlap-tile)."""
    options = {"roi_size": description["patch_size"], "sw_batch_size": description["inference"]["sw_batch_size"]}
    options.update(overlap=description["inference"]["overlap"], mode="gaussian")
    with torch.inference_mode():
        if description["network"]["name"] == "unet_paper":
            return _overlap_tile(network, images, description)
        if description.get("slice_axis") is not None:  # a 2D network over a volume, slice by slice
            return SliceInferer(spatial_dim=description["slice_axis"], progress=False, **options)(images, network)
        return sliding_window_inference(images, predictor=network, **options)


def _overlap_tile(network: torch.nn.Module, images: torch.Tensor, description: dict[str, Any]) -> torch.Tensor:
    tile, depth = description["patch_size"], len(description["network"]["channels"]) - 1
    batch_size, axis = description["inference"]["sw_batch_size"], description.get("slice_axis")
    if axis is None:
        return overlap_tile_logits(network, images, tile, depth, batch_size)
    # a 2D network over volumes: the slices become the batch
    slices = images.movedim(2 + axis, 0)
    logits = overlap_tile_logits(network, slices.flatten(0, 1), tile, depth, batch_size)
    return logits.unflatten(0, slices.shape[:2]).movedim(0, 2 + axis)


def predict(
    network: torch.nn.Module, description: dict[str, Any], image: MetaTensor, device: torch.device
) -> np.ndarray:
    """Label map (uint8) indexed like ``image`` (channel-first, as read), whatever preparation did in between."""
    preparation = prepare(description["preprocess"], (IMAGE,))
    prepared = preparation({IMAGE: image})[IMAGE]
    logits = sliding_window_logits(network, prepared[None].to(device), description)[0]
    probabilities = MetaTensor(
        torch.softmax(logits, 0).cpu(), meta=prepared.meta, applied_operations=prepared.applied_operations
    )
    # resample probabilities, not labels, back to the input grid; then take the most likely class
    restored = preparation.inverse({IMAGE: probabilities})[IMAGE]
    return torch.argmax(restored, dim=0).numpy().astype(np.uint8)
