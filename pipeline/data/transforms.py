"""MONAI transform chains, shared so that training, evaluation and ``segment`` see the same data."""

from __future__ import annotations

from typing import Any

import numpy as np
from monai import transforms as T

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


def validation() -> T.Compose:
    return load((IMAGE, LABEL))
