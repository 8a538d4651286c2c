"""Score a set of cases and write every output of an evaluation; the evaluate stage and evaluate-folders share it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from pipeline.evaluation.figures import case_overlays, metric_boxplots, png_bytes
from pipeline.evaluation.metrics import LabelledCase, case_scores, summarise, tolerances
from pipeline.evaluation.report import render
from pipeline.files import atomic_path, write_csv, write_json, write_text

PER_CASE_FILE, METRICS_FILE, REPORT_FILE = "per_case.csv", "metrics.json", "report.html"
BOXPLOTS_FILE, CASES_FILE = "boxplots.png", "cases.png"
OUTPUT_FILES = (PER_CASE_FILE, METRICS_FILE, REPORT_FILE, BOXPLOTS_FILE, CASES_FILE)


def _write_bytes(path: Path, content: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)


def shown_cases(per_case: pd.DataFrame) -> dict[str, str]:
    """The best, median and worst case by mean Dice (ties keep the given order)."""
    ranked = per_case.sort_values("dice_mean", ascending=False, kind="stable").case_id.tolist()
    return {"best": ranked[0], "median": ranked[len(ranked) // 2], "worst": ranked[-1]}


def evaluate_cases(
    case_ids: Sequence[str],
    load: Callable[[str], LabelledCase],
    classes: dict[int, str],
    nsd_tolerance_mm: float | Sequence[float],
    out_dir: Path,
    title: str,
    details: dict[str, str] | None = None,
    unmatched: dict[str, list[str]] | None = None,
) -> dict:
    """Score every case ``load`` gives, then write the per-case CSV, the summary (``metrics.json``), the pictures
    and ``report.html`` into ``out_dir``; returns the summary. ``classes`` maps foreground label values to names."""
    out_dir = Path(out_dir)
    tolerance = tolerances(nsd_tolerance_mm, classes)
    rows = []
    for case_id in tqdm(case_ids, desc="scoring", unit="case"):
        case = load(case_id)
        rows.append(
            {"case_id": case_id, **case_scores(case.prediction, case.reference, classes, case.spacing, tolerance)}
        )
    per_case = pd.DataFrame(rows)
    names = list(classes.values())
    summary = summarise(per_case, names)
    if unmatched:
        summary["unmatched_files"] = {where: len(files) for where, files in unmatched.items()}

    shown = shown_cases(per_case)
    dice = per_case.set_index("case_id").dice_mean
    drawn = [(f"{kind}: {case_id} (Dice {dice[case_id]:.3f})", load(case_id)) for kind, case_id in shown.items()]
    boxplots, overlays = png_bytes(metric_boxplots(per_case, names)), png_bytes(case_overlays(drawn, classes))
    tolerances_text = ", ".join(f"{classes[v]} {t:g} mm" for v, t in tolerance.items())
    html = render(
        title,
        {
            **(details or {}),
            "classes (label value)": ", ".join(f"{n} ({v})" for v, n in classes.items()),
            "surface Dice tolerance": tolerances_text,
        },
        summary,
        per_case,
        names,
        boxplots,
        overlays,
        [f"{kind} {case_id}" for kind, case_id in shown.items()],
        unmatched or {},
    )
    write_csv(out_dir / PER_CASE_FILE, per_case)
    write_json(out_dir / METRICS_FILE, summary)
    _write_bytes(out_dir / BOXPLOTS_FILE, boxplots)
    _write_bytes(out_dir / CASES_FILE, overlays)
    write_text(out_dir / REPORT_FILE, html)
    return summary
