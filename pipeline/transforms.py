"""MONAI transform chains, shared so that training, evaluation and ``segment`` see the same data."""

from __future__ import annotations

from typing import Any

import numpy as np
from monai import transforms as T

from pipeline.config import AugmentationConfig

IMAGE, LABEL, WEIGHT = "image", "label", "weight"


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
    return T.ScaleIntensityRanged(
        IMAGE, a_min=low, a_max=high, b_min=(low - mean) / std, b_max=(high - mean) / std, clip=True
    )


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


def _elastic(dims: int, aug: AugmentationConfig, keys: tuple[str, ...], modes: tuple[str, ...]) -> T.Transform:
    if dims == 2:
        return T.Rand2DElasticd(
            keys, prob=aug.elastic_prob, spacing=(20, 20), magnitude_range=(1, 2), mode=modes, padding_mode="zeros"
        )
    return T.Rand3DElasticd(
        keys, prob=aug.elastic_prob, sigma_range=(5, 8), magnitude_range=(50, 150), mode=modes, padding_mode="zeros"
    )


def training_augmentation(
    patch_size: list[int], aug: AugmentationConfig, keys: tuple[str, ...] = (IMAGE, LABEL)
) -> list[T.Transform]:
    """Random steps on a patch of ``len(patch_size)`` dimensions, run each iteration after the cached ones;
    labels move with the image (nearest neighbour), weight maps too (interpolated)."""
    dims, modes = len(patch_size), tuple("nearest" if k == LABEL else "bilinear" for k in keys)
    return [
        T.RandAffined(
            keys,
            prob=aug.affine_prob,
            rotate_range=[np.pi / 12] * (1 if dims == 2 else 3),
            scale_range=[0.15] * dims,
            mode=modes,
            padding_mode="zeros",
        ),
        _elastic(dims, aug, keys, modes),
        *[T.RandFlipd(keys, prob=aug.flip_prob, spatial_axis=axis) for axis in range(dims)],
        T.RandGaussianNoised(IMAGE, prob=aug.noise_prob, std=0.1),
        T.RandScaleIntensityd(IMAGE, factors=0.25, prob=aug.intensity_prob),
        T.RandShiftIntensityd(IMAGE, offsets=0.1, prob=aug.intensity_prob),
        T.RandAdjustContrastd(IMAGE, gamma=(0.7, 1.5), prob=aug.gamma_prob),
        # last, so that adding them left the random streams of the steps above as they were
        T.RandGaussianSmoothd(IMAGE, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=aug.smooth_prob),
        T.RandBiasFieldd(IMAGE, coeff_range=(0.0, 0.1), prob=aug.bias_field_prob),
    ]


def training(
    patch_size: list[int], aug: AugmentationConfig, slices_of_volumes: bool = False, weighted: bool = False
) -> T.Compose:
    """Cached loading and padding, then a random patch and augmentation. With ``slices_of_volumes``
    a 2D patch is cut from one axial slice of a 3D volume (2D training on 3D data); ``weighted``
    carries each case's weight map along."""
    keys = (IMAGE, LABEL, WEIGHT) if weighted else (IMAGE, LABEL)
    crop = [*patch_size, 1] if slices_of_volumes else list(patch_size)
    steps = [*load(keys).transforms, T.SpatialPadd(keys, spatial_size=crop)]
    if slices_of_volumes:  # most slices hold no foreground: draw as many with it as without
        steps += [
            T.RandCropByPosNegLabeld(keys, LABEL, spatial_size=crop, pos=1, neg=1, num_samples=1),
            T.SqueezeDimd(keys, dim=3),
        ]
    else:
        steps.append(T.RandSpatialCropd(keys, roi_size=crop, random_size=False))
    return T.Compose([*steps, *training_augmentation(patch_size, aug, keys)])


def validation() -> T.Compose:
    return load((IMAGE, LABEL))
