"""Sliding-window prediction, and mapping it back onto the input's own voxel grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from pipeline.config import PreprocessConfig
from pipeline.transforms import IMAGE, load, prepare


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


def predict_file(network: torch.nn.Module, description: dict[str, Any], image_path: Path, device: torch.device) -> np.ndarray:
    """Label map (uint8) with exactly the shape and voxel order of the file's own array."""
    preparation = prepare(PreprocessConfig(**description["preprocess"]), (IMAGE,))
    image = preparation(load((IMAGE,))({IMAGE: str(image_path)}))[IMAGE]
    logits = sliding_window_logits(network, image[None].to(device), description)[0]
    probabilities = MetaTensor(torch.softmax(logits, 0).cpu(), meta=image.meta, applied_operations=image.applied_operations)
    # resample probabilities, not labels, back to the input grid; then take the most likely class
    restored = preparation.inverse({IMAGE: probabilities})[IMAGE]
    return torch.argmax(restored, dim=0).numpy().astype(np.uint8)
