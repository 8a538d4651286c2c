"""Post-processing of label maps: keep each class's largest connected component, where validation says so."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.transforms import KeepLargestConnectedComponent


def keep_largest_component(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """Every voxel of each of ``classes`` outside that class's largest connected component (full
    connectivity) set to background, in place (a copy of a large volume is what memory cannot spare)."""
    if not classes:
        return labels
    keep = KeepLargestConnectedComponent(applied_labels=list(classes), is_onehot=False, independent=True)
    return np.asarray(keep(labels[None]))[0]


def _dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Of one class's masks; 1 where both are empty."""
    as_tensor = [torch.from_numpy(np.ascontiguousarray(m))[None, None] for m in (prediction, reference)]
    return float(compute_dice(*as_tensor, include_background=True, ignore_empty=False)[0, 0])


def decide_largest_component(cases: Iterable[tuple[np.ndarray, np.ndarray]], n_classes: int) -> list[int]:
    """The foreground classes whose mean Dice over the (prediction, reference) label-map pairs is
    higher with only their largest component kept than without, as nnU-Net decides its
    post-processing on validation predictions. Pairs are read one at a time (a generator will do)."""
    gains = np.zeros(n_classes)
    for prediction, reference in cases:
        for cls in range(1, n_classes):
            predicted = prediction == cls
            if not predicted.any():
                continue
            kept = keep_largest_component(predicted.astype(np.uint8), [1]) == 1
            truth = reference == cls
            gains[cls] += _dice(kept, truth) - _dice(predicted, truth)
    return [cls for cls in range(1, n_classes) if gains[cls] > 1e-9]
