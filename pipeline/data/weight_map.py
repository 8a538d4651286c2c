"""The U-Net paper's pixel weights: w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)).

w_c balances the class frequencies of the label map; the second term weighs the background
between two objects by d1 and d2, the distances to the nearest and the second nearest object,
so that the network learns the thin borders that separate touching objects. Objects are the
connected components of the foreground. Computed once per label map, in preprocessing.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def class_balance(label: np.ndarray) -> np.ndarray:
    """Each voxel weighs N / (K * N_c): every one of the K classes present weighs as much in all."""
    values, inverse, counts = np.unique(label, return_inverse=True, return_counts=True)
    return (label.size / (len(values) * counts.astype(np.float64)))[inverse.reshape(label.shape)]


def nearest_two_distances(
    label: np.ndarray, spacing: tuple[float, ...], reach: float = np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Per voxel, the distances (in the units of ``spacing``) to the nearest and the second nearest
    object; infinity where there are fewer objects within ``reach``."""
    objects, _ = ndimage.label(label > 0)
    first, second = np.full(label.shape, np.inf), np.full(label.shape, np.inf)
    grow = [int(min(np.ceil(reach / s), n)) for s, n in zip(spacing, label.shape)]
    for index, box in enumerate(ndimage.find_objects(objects), start=1):
        near = tuple(
            slice(max(0, b.start - g), b.stop + g) for b, g in zip(box, grow)
        )  # where the object is within reach
        distance = ndimage.distance_transform_edt(objects[near] != index, sampling=spacing)
        second[near] = np.minimum(second[near], np.maximum(first[near], distance))
        first[near] = np.minimum(first[near], distance)
    return first, second


def boundary_weight_map(label: np.ndarray, spacing: tuple[float, ...], w0: float, sigma: float) -> np.ndarray:
    """The paper's weights for one label map; the border term applies to background voxels only."""
    # beyond d1 + d2 = 4 sigma the border term is below w0 / 2980: objects farther away are left out
    first, second = nearest_two_distances(label, spacing, reach=4 * sigma)
    border = w0 * np.exp(-((first + second) ** 2) / (2 * sigma**2))  # 0 where there is no second object
    border[label > 0] = 0.0
    return (class_balance(label) + border).astype(np.float32)
