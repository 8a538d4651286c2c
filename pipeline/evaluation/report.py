"""The evaluation report: one self-contained HTML file (pictures embedded as base64 PNG), readable offline."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

import pandas as pd

from pipeline.evaluation.metrics import METRICS

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eef2f7; } tr:nth-child(even) td { background: #fafafa; }
.note { color: #555; font-size: 0.9em; max-width: 60em; } img { max-width: 100%; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; } dt { font-weight: 600; }
"""


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_table(summary: dict, classes: Sequence[str]) -> str:
    def cell(column: str) -> str:
        return f"{summary[column]:.3f} ± {summary['std'][column]:.3f} ({summary['median'][column]:.3f})"

    rows = [[name, *(cell(f"{m}_{name}") for m in METRICS)] for name in (*classes, "mean")]
    return _table(["class", *(label for label, _ in METRICS.values())], rows)


def _empty_table(summary: dict) -> str:
    counts = summary["empty_cases"]
    rows = [[name, *(str(c[k]) for k in ("both", "reference", "prediction"))] for name, c in counts.items()]
    return _table(
        ["class", "absent from both", "only predicted (absent from reference)", "missed (absent from prediction)"], rows
    )


def _per_case_table(per_case: pd.DataFrame, classes: Sequence[str]) -> str:
    columns = [f"{m}_mean" for m in METRICS] + ["pixel_error"]
    header = ["case", *(f"{label} (mean)" for label, _ in METRICS.values()), "Pixel error", "absent classes"]
    rows = []
    for row in per_case.sort_values("dice_mean", ascending=False).itertuples(index=False):
        values = row._asdict()
        absent = [f"{c}: {values[f'absent_{c}']}" for c in classes if values[f"absent_{c}"] != "neither"]
        rows.append([str(row.case_id), *(f"{values[c]:.3f}" for c in columns), "; ".join(absent)])
    return _table(header, rows)


def render(
    title: str,
    details: dict[str, str],
    summary: dict,
    per_case: pd.DataFrame,
    classes: Sequence[str],
    boxplots_png: bytes,
    cases_png: bytes,
    shown: Sequence[str],
    unmatched: dict[str, list[str]],
) -> str:
    """The whole page; ``details`` are shown as a list at the top, ``shown`` names the drawn cases."""
    facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in details.items())
    missing = "".join(
        f"<p><b>{escape(where)}</b> ({len(names)}): {escape(', '.join(names))}</p>"
        for where, names in unmatched.items()
        if names
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
<dl>{facts}<dt>cases scored</dt><dd>{summary["n_cases"]}</dd></dl>
{f"<h2>Files without a partner (not scored)</h2>{missing}" if missing else ""}
<h2>Summary</h2>
<p class="note">Mean ± standard deviation (median) over cases. Distances in mm. HD95: 95th-percentile Hausdorff
distance; ASSD: average symmetric surface distance; Surface Dice: normalised surface Dice at each class's
tolerance. "mean" averages the classes of each case first.</p>
{_summary_table(summary, classes)}
<h2>Empty cases</h2>
<p class="note">A class absent from both reference and prediction scores 1 (Dice, IoU, sensitivity, precision,
surface Dice) and 0 mm; a class in only one of them scores 0 and the image diagonal in mm. These cases are in
the means above; here is how many there are.</p>
{_empty_table(summary)}
<h2>Scores per class</h2>
{_image(boxplots_png, "box plots of every score per class")}
<h2>Best, median and worst case</h2>
<p class="note">Ranked by mean Dice: {escape(", ".join(shown))}. Planes through the reference's centre of mass;
reference contours solid, prediction contours dashed.</p>
{_image(cases_png, "contours of reference and prediction on three planes")}
<h2>Every case</h2>
{_per_case_table(per_case, classes)}
</body></html>
"""
