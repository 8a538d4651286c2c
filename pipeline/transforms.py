"""MONAI transform chains, shared so that training, evaluation and ``segment`` see the same data."""

from __future__ import annotations

from typing import Any

import numpy as np
from monai import transforms as T

from pipeline.config import AugmentationConfig

IMAGE, LABEL = "image", "label"


def load(keys: tuple[str, ...]) -> T.Compose:
    """Read NIfTI with nibabel so that arrays keep the file's own voxel order (needed to write results back)."""
    return T.Compose(
        [
            T.LoadImaged(keys, reader="NibabelReader", image_only=True, dtype=np.float32),
            T.EnsureChannelFirstd(keys, channel_dim="no_channel"),
        ]
    )


def _nonzero(x):
    return x != 0


def intensity(plan: dict[str, Any]) -> T.Transform:
    """Per-volume z-score, or clip to a window then z-score with fixed statistics (CT)."""
    spec = plan["intensity"]
    if spec["scheme"] == "zscore":
        return T.NormalizeIntensityd(IMAGE, channel_wise=True)
    low, high, mean, std = spec["low"], spec["high"], spec["mean"], spec["std"]
    return T.ScaleIntensityRanged(IMAGE, a_min=low, a_max=high, b_min=(low - mean) / std, b_max=(high - mean) / std, clip=True)


def prepare(plan: dict[str, Any], keys: tuple[str, ...]) -> T.Compose:
    """Orientation, spacing, foreground crop and intensity, as planned; the spatial steps are
    invertible, so that predictions map back onto the input's grid."""
    modes = ["bilinear" if k == IMAGE else "nearest" for k in keys]
    steps: list[T.Transform] = [
        T.Orientationd(keys, axcodes=plan["orientation"][: len(plan["spacing"])], labels=None),
        T.Spacingd(keys, pixdim=plan["spacing"], mode=modes),
    ]
    if plan["crop_foreground"]:
        steps.append(T.CropForegroundd(keys, source_key=IMAGE, select_fn=_nonzero, allow_smaller=True))
    steps.append(intensity(plan))
    return T.Compose(steps)


def training_augmentation(patch_size: list[int], aug: AugmentationConfig) -> list[T.Transform]:
    """Random steps, run each iteration after the cached deterministic ones."""
    keys = (IMAGE, LABEL)
    flips = [T.RandFlipd(keys, prob=aug.flip_prob, spatial_axis=axis) for axis in range(len(patch_size))]
    return [
        T.RandSpatialCropd(keys, roi_size=patch_size, random_size=False),
        T.RandAffined(
            keys,
            prob=aug.affine_prob,
            rotate_range=[np.pi / 12] * len(patch_size),
            scale_range=[0.15] * len(patch_size),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        T.Rand3DElasticd(
            keys,
            prob=aug.elastic_prob,
            sigma_range=(5, 8),
            magnitude_range=(50, 150),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        *flips,
        T.RandGaussianNoised(IMAGE, prob=aug.noise_prob, std=0.1),
        T.RandScaleIntensityd(IMAGE, factors=0.25, prob=aug.intensity_prob),
        T.RandShiftIntensityd(IMAGE, offsets=0.1, prob=aug.intensity_prob),
        T.RandAdjustContrastd(IMAGE, gamma=(0.7, 1.5), prob=aug.gamma_prob),
    ]


def training(patch_size: list[int], aug: AugmentationConfig) -> T.Compose:
    keys = (IMAGE, LABEL)
    cached = [*load(keys).transforms, T.SpatialPadd(keys, spatial_size=patch_size)]
    return T.Compose([*cached, *training_augmentation(patch_size, aug)])


def validation() -> T.Compose:
    return load((IMAGE, LABEL))
