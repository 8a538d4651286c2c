"""Pictures of an evaluation: box plots of every score, and the best, median and worst case drawn as contours."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from pipeline.evaluation.metrics import METRICS, LabelledCase

CLASS_COLOURS = plt.get_cmap("tab10").colors
MARGIN_VOXELS = 8  # around the structure, so that a small one fills the picture but keeps its surroundings


def png_bytes(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def metric_boxplots(per_case: pd.DataFrame, classes: Sequence[str]) -> plt.Figure:
    """One panel per score (and pixel error), a box per class with every case as a dot."""
    panels = [(f"{metric}_{{}}", label) for metric, (label, _) in METRICS.items()] + [("pixel_error", "Pixel error")]
    columns = 4
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for axis, (pattern, label) in zip(axes.flat, panels):
        names = list(classes) if "{}" in pattern else ["all classes"]
        values = [per_case[pattern.format(c)] for c in classes] if "{}" in pattern else [per_case[pattern]]
        axis.boxplot(values, showmeans=True, widths=0.6)
        for position, scores in enumerate(values, start=1):
            jitter = np.random.default_rng(position).uniform(-0.15, 0.15, len(scores))
            axis.scatter(position + jitter, scores, s=7, alpha=0.5, color=CLASS_COLOURS[(position - 1) % 10])
        axis.set_xticks(range(1, len(names) + 1), names, rotation=30 if len(names) > 3 else 0, fontsize=8)
        axis.set_title(label, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    for axis in axes.flat[len(panels) :]:
        axis.axis("off")
    figure.suptitle(f"Scores per class ({len(per_case)} cases)", fontsize=11)
    figure.tight_layout()
    return figure


def _centre(case: LabelledCase) -> tuple[int, ...]:
    """The reference's centre of mass, else the prediction's, else the middle of the volume."""
    for labels in (case.reference, case.prediction):
        where = np.argwhere(labels > 0)
        if len(where):
            return tuple(np.rint(where.mean(axis=0)).astype(int))
    return tuple(s // 2 for s in case.reference.shape)


def _window(case: LabelledCase) -> tuple[slice, ...]:
    where = np.argwhere((case.reference > 0) | (case.prediction > 0))
    if not len(where):
        return tuple(slice(None) for _ in case.reference.shape)
    low = np.maximum(where.min(axis=0) - MARGIN_VOXELS, 0)
    high = where.max(axis=0) + MARGIN_VOXELS + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _views(case: LabelledCase) -> list[tuple[str, tuple, tuple[float, float]]]:
    """(name, index into the arrays, (horizontal, vertical) spacing) of each plane to draw."""
    window = _window(case)
    if case.reference.ndim == 2:
        return [("slice", window, (case.spacing[0], case.spacing[1]))]
    x, y, z = _centre(case)
    sx, sy, sz = case.spacing[:3]
    return [
        (f"axial k={z}", (window[0], window[1], z), (sx, sy)),
        (f"coronal j={y}", (window[0], y, window[2]), (sx, sz)),
        (f"sagittal i={x}", (x, window[1], window[2]), (sy, sz)),
    ]


def case_overlays(cases: Sequence[tuple[str, LabelledCase]], classes: dict[int, str]) -> plt.Figure:
    """A row per (title, case): planes through the structure, the reference's contours solid, the prediction's dashed."""
    n_views = 1 if cases[0][1].reference.ndim == 2 else 3
    figure, axes = plt.subplots(len(cases), n_views, figsize=(3.3 * n_views, 3.4 * len(cases)), squeeze=False)
    for row, (title, case) in zip(axes, cases):
        for axis, (view, index, (horizontal, vertical)) in zip(row, _views(case)):
            origin = "lower" if view.startswith(("coronal", "sagittal")) else "upper"
            background = case.image if case.image is not None else 0.3 * (case.reference > 0)
            plane = background[index].T
            low, high = np.percentile(plane, [1, 99]) if case.image is not None else (0, 1)
            axis.imshow(plane, cmap="gray", vmin=low, vmax=high, origin=origin, aspect=vertical / horizontal)
            for colour, value in zip(CLASS_COLOURS * 10, classes):
                for labels, style in ((case.reference, "solid"), (case.prediction, "dashed")):
                    mask = (labels[index] == value).T
                    if mask.any() and not mask.all():
                        axis.contour(mask, levels=[0.5], colors=[colour], linestyles=style, linewidths=1.4)
            axis.set_title(f"{title}\n{view}", fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
    handles = [Line2D([], [], color=c, label=name) for c, name in zip(CLASS_COLOURS * 10, classes.values())]
    handles += [
        Line2D([], [], color="grey", linestyle="solid", label="reference"),
        Line2D([], [], color="grey", linestyle="dashed", label="prediction"),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    return figure
