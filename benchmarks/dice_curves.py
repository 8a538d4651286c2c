"""Validation Dice against elapsed minutes, for runs laid over each other.

    python benchmarks/dice_curves.py NAME=HISTORY.csv [NAME=HISTORY.csv ...] -o curves.png

Each CSV needs ``minutes`` and ``val_dice_mean`` columns: a run's ``models/history.csv``, or
the ``--history`` file of ``plain_monai_loop.py``. (``dvc plots diff`` draws the same from the
histories of two commits.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=HISTORY.csv")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--target", type=float, default=0.89, help="a horizontal line to reach")
    parser.add_argument("--ylim", type=float, nargs=2, default=(0.75, 0.91), metavar=("LOW", "HIGH"))
    args = parser.parse_args()
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    for run in args.runs:
        name, _, path = run.partition("=")
        history = pd.read_csv(path).dropna(subset=["val_dice_mean"])
        axes.plot(history.minutes, history.val_dice_mean, marker="o", markersize=3, label=name)
    axes.axhline(args.target, color="grey", linestyle="--", linewidth=1, label=f"target {args.target}")
    axes.set(xlabel="minutes of training (2 CPU cores)", ylabel="mean validation Dice", ylim=tuple(args.ylim))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
