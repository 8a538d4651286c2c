"""The dataset fingerprint, and the preprocessing and patch size planned from it (after nnU-Net).

The fingerprint holds, per case, spacing, shape, class voxel counts and a sample of
foreground intensities. From it come the target spacing (``network_plan.target_spacing``) and the
intensity normalisation (CT: clip to foreground percentiles, then z-score with foreground
statistics; other modalities: z-score per volume), unless params fix them; the network, patch
and batch are planned in ``network_plan``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipeline.config import PreprocessConfig
from pipeline.networks.plan import target_spacing

FOREGROUND_SAMPLES = 500
CLIP_PERCENTILES = (0.5, 99.5)


def _world_order(values: tuple, image: sitk.Image) -> list:
    """Per-axis values put in world-axis order (x, y, z), as they stand after reorientation to RAS."""
    dimension = image.GetDimension()
    direction = np.abs(np.array(image.GetDirection()).reshape(dimension, dimension))
    ordered = list(values)
    for axis in range(dimension):
        ordered[int(np.argmax(direction[:, axis]))] = values[axis]
    return ordered


def case_fingerprint(case_id: str, image: sitk.Image, label: sitk.Image) -> dict[str, Any]:
    """Spacing and shape in world-axis order, class voxel counts, and a seeded foreground intensity sample."""
    pixels = sitk.GetArrayViewFromImage(image)
    classes = np.rint(sitk.GetArrayViewFromImage(label)).astype(np.int64)
    foreground = pixels[classes > 0]
    rng = np.random.default_rng(int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16))
    sample = (
        rng.choice(foreground, size=min(FOREGROUND_SAMPLES, foreground.size), replace=False)
        if foreground.size
        else foreground
    )
    counts = np.bincount(classes.ravel())
    return {
        "spacing": [float(s) for s in _world_order(image.GetSpacing(), image)],
        "shape": [int(s) for s in _world_order(image.GetSize(), image)],
        "class_voxels": {str(c): int(n) for c, n in enumerate(counts) if n},
        "foreground_sample": [float(f"{v:.6g}") for v in sample],
    }


def _intensity(fingerprints: list[dict[str, Any]], modality: str, config: PreprocessConfig) -> dict[str, Any]:
    scheme = config.normalization
    if scheme == "auto":
        scheme = "ct" if modality.upper() == "CT" else "zscore"
    if scheme == "zscore":
        return {"scheme": "zscore"}
    if scheme == "window":
        low, high = config.window
        return {"scheme": "clip_zscore", "low": low, "high": high, "mean": (low + high) / 2, "std": (high - low) / 2}
    pooled = np.concatenate([np.asarray(f["foreground_sample"]) for f in fingerprints])
    low, high = np.percentile(pooled, CLIP_PERCENTILES)
    clipped = np.clip(pooled, low, high)
    return {
        "scheme": "clip_zscore",
        "low": float(low),
        "high": float(high),
        "mean": float(clipped.mean()),
        "std": float(clipped.std() or 1.0),
    }


def plan_spacing(fingerprints: list[dict[str, Any]], config: PreprocessConfig) -> tuple[list[float], str]:
    """The target spacing, and why."""
    if config.spacing:
        return list(config.spacing), "params (preprocess.spacing)"
    return target_spacing([f["spacing"] for f in fingerprints], [f["shape"] for f in fingerprints])


def plan_preprocessing(
    fingerprints: list[dict[str, Any]], modality: str, config: PreprocessConfig, spacing: list[float] | None = None
) -> dict[str, Any]:
    """Everything needed to prepare a volume the way the training data was prepared (``spacing``: as
    ``plan_spacing`` planned it, where the caller has it already)."""
    spacing = spacing if spacing is not None else plan_spacing(fingerprints, config)[0]
    return {
        "orientation": config.orientation,
        "spacing": [float(s) for s in spacing],
        "crop_foreground": config.crop_foreground,
        "intensity": _intensity(fingerprints, modality, config),
    }


def plan_digest(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
