"""Preprocessing throughput on the real hippocampus data: cases per second, cold and incremental.

    python benchmarks/preprocess_speed.py [--dataset ../shared/datasets/hippocampus] [--repeats 3]

Prints the median of the repeats for one worker and for all cores, and for a re-run in which
nothing changed (which should read no image at all), and appends them to
``benchmarks/results/preprocess_speed.csv`` (``--results``; ``--no-record`` only prints them), which the
documentation's Measured page renders.
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # the figures, not progress bars
import statistics
import tempfile
import time
from pathlib import Path

import record

from pipeline.config import DataConfig, PreprocessConfig
from pipeline.data.preprocess import preprocess


def _timed(raw: Path, out: Path, workers: int) -> tuple[float, int]:
    started = time.perf_counter()
    manifest = preprocess(raw, out, DataConfig(), PreprocessConfig(workers=workers))
    return time.perf_counter() - started, len(manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/datasets/hippocampus"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=record.RESULTS / "preprocess_speed.csv")
    parser.add_argument("--no-record", action="store_true", help="print the figures, append them nowhere")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    cores = os.cpu_count() or 1
    results: dict[str, list[float]] = {"1 worker": [], f"{cores} workers": [], "re-run, nothing changed": []}
    for _ in range(args.repeats):
        for workers, key in ((1, "1 worker"), (cores, f"{cores} workers")):
            with tempfile.TemporaryDirectory() as out:
                seconds, cases = _timed(args.dataset, Path(out), workers)
                results[key].append(cases / seconds)
                if workers == cores:
                    seconds, cases = _timed(args.dataset, Path(out), workers)
                    results["re-run, nothing changed"].append(cases / seconds)
    print(f"{args.dataset}: {cases} cases, median of {args.repeats} runs, {cores} cores")
    for key, rates in results.items():
        print(f"  {key:>26}: {statistics.median(rates):7.1f} cases/s  (runs: {', '.join(f'{r:.1f}' for r in rates)})")
    ratio = statistics.median(results[f"{cores} workers"]) / statistics.median(results["1 worker"])
    print(f"  {'speed-up with all cores':>26}: {ratio:7.2f}x")
    if not args.no_record:
        rows = [
            {
                "configuration": key,
                "cases": cases,
                "repeats": args.repeats,
                "cases_per_s": f"{statistics.median(rates):.1f}",
            }
            for key, rates in results.items()
        ]
        record.append("preprocess_speed.csv", rows, path=args.results)


if __name__ == "__main__":
    main()
