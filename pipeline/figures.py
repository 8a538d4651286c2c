"""Pictures of an evaluation: Dice per class, and the best, median and worst case to look at."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap

from pipeline.files import atomic_path

LABEL_COLOURS = ListedColormap(
    [(0, 0, 0, 0), (0.95, 0.3, 0.2, 0.55), (0.2, 0.6, 1.0, 0.55), (0.3, 0.9, 0.3, 0.55), (1.0, 0.85, 0.1, 0.55)]
)


def _save(figure: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)


def dice_boxplot(per_case: pd.DataFrame, classes: list[str], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(1.6 + 1.4 * len(classes), 4))
    values = [per_case[f"dice_{c}"].dropna() for c in classes]
    axis.boxplot(values, showmeans=True)
    for position, scores in enumerate(values, start=1):
        jitter = np.random.default_rng(position).uniform(-0.12, 0.12, len(scores))
        axis.scatter(position + jitter, scores, s=8, alpha=0.5)
    axis.set_xticks(range(1, len(classes) + 1), classes)
    axis.set(ylabel="Dice", ylim=(0, 1), title=f"Validation Dice per class ({len(per_case)} cases)")
    figure.tight_layout()
    _save(figure, path)


def case_gallery(cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    """One row per (title, image, truth, prediction); a volume is cut through its slice with most labelled voxels."""
    figure, axes = plt.subplots(len(cases), 2, figsize=(6, 3 * len(cases)), squeeze=False)
    for row, (title, image, truth, prediction) in zip(axes, cases):
        if image.ndim == 3:
            z = int(np.argmax((truth > 0).sum(axis=(0, 1))))
            image, truth, prediction = image[:, :, z], truth[:, :, z], prediction[:, :, z]
        for axis, labels, name in zip(row, (truth, prediction), ("reference", "prediction")):
            axis.imshow(np.rot90(image), cmap="gray")
            axis.imshow(np.rot90(labels), cmap=LABEL_COLOURS, vmin=0, vmax=LABEL_COLOURS.N - 1, interpolation="nearest")
            axis.set_title(f"{title}: {name}", fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    _save(figure, path)
