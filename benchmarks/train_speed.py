"""Training throughput: samples per second, the share of time spent waiting for data, peak GPU memory.

    python benchmarks/train_speed.py [--params params.yaml] [--epochs 4] [--workers 0 1]
        [--prep data/preprocessed] [--split data/split.json] 2>/dev/null

Trains the params' network on the prepared data (run `dvc repro preprocess split` first) for a
few epochs with each number of data workers, on the device the training would pick (a GPU if
there is one, where `amp` and `compile` follow the params). Prints medians over the epochs
after the first (which warms caches up). The model is thrown away; runs go to a temporary MLflow store.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from pathlib import Path

import pandas as pd
import torch

from pipeline.config import load_params
from pipeline.train import train


def _measure(args: argparse.Namespace, workers: int) -> dict[str, float]:
    params = load_params(args.params)
    params.train = params.train.model_copy(
        update={"epochs": args.epochs, "val_every": args.epochs, "data_workers": workers}
    )
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
        train(args.prep, args.split, Path(scratch) / "models", params)
        history = pd.read_csv(Path(scratch) / "models" / "history.csv").iloc[1:]
    figures = {
        "samples/s": statistics.median(history.samples_per_s),
        "data wait": statistics.median(history.data_wait_fraction),
    }
    if "peak_gpu_memory_gib" in history:
        figures["peak GPU memory (GiB)"] = float(history.peak_gpu_memory_gib.max())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prep", type=Path, default=Path("data/preprocessed"))
    parser.add_argument("--split", type=Path, default=Path("data/split.json"))
    parser.add_argument("--epochs", type=int, default=4, help="at least 2: the first is not counted")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"{args.params} on {device}: median of epochs 2-{args.epochs}")
    for workers in args.workers:
        figures = _measure(args, workers)
        print(f"  data_workers={workers}: " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
