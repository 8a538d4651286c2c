"""Sliding-window prediction, and mapping it back onto the input's own voxel grid."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from pipeline.transforms import IMAGE, prepare


def sliding_window_logits(network: torch.nn.Module, images: torch.Tensor, description: dict[str, Any]) -> torch.Tensor:
    """Logits for a batch of prepared images, tiled with Gaussian-weighted overlapping patches."""
    inference = description["inference"]
    with torch.inference_mode():
        return sliding_window_inference(
            images,
            roi_size=description["patch_size"],
            sw_batch_size=inference["sw_batch_size"],
            predictor=network,
            overlap=inference["overlap"],
            mode="gaussian",
        )


def predict(network: torch.nn.Module, description: dict[str, Any], image: MetaTensor, device: torch.device) -> np.ndarray:
    """Label map (uint8) indexed like ``image`` (channel-first, as read), whatever preparation did in between."""
    preparation = prepare(description["preprocess"], (IMAGE,))
    prepared = preparation({IMAGE: image})[IMAGE]
    logits = sliding_window_logits(network, prepared[None].to(device), description)[0]
    probabilities = MetaTensor(torch.softmax(logits, 0).cpu(), meta=prepared.meta, applied_operations=prepared.applied_operations)
    # resample probabilities, not labels, back to the input grid; then take the most likely class
    restored = preparation.inverse({IMAGE: probabilities})[IMAGE]
    return torch.argmax(restored, dim=0).numpy().astype(np.uint8)
