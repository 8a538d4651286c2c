"""Training throughput of medseg's default beside a plain MONAI loop, in one run on one machine.

    python benchmarks/train_speed.py [--params params.yaml] [--epochs 4]
        [--variant "train.amp=false" --variant "train.data_workers=0" ...]
        [--prep data/preprocessed] [--split data/split.json] 2>/dev/null

Run `dvc repro split` first. For the plain loop (benchmarks/plain_monai_loop.py) and for the
params' training (and each variant: params overridden with KEY=VALUE pairs separated by ';'),
prints the median over the epochs after the first of: samples/s, voxels/s, the share of the
step's time spent waiting for data, and the step's achieved FLOP/s as a share of this
machine's measured matrix-multiply ceiling in the step's precision. On a GPU, also the peak
memory. The models are thrown away; runs go to a temporary MLflow store. The figures are appended to
``benchmarks/results/train_speed.csv`` (``--results``; ``--no-record`` only prints them), which the
documentation's Measured page renders.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the figures, not progress bars
import pandas as pd
import plain_monai_loop as plain
import record
import torch
from monai.losses import DiceCELoss
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import Params
from pipeline.networks.model import load_model
from pipeline.params import load_params, with_overrides
from pipeline.stages.train import train
from pipeline.training.probe import StepPlan


@functools.cache
def matmul_ceiling(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large matrix product, the most this machine does in that precision. Measured only for the
    precisions a variant trains in: float16 on a CPU without native support takes tens of minutes."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times[2:])


def step_flops(network: torch.nn.Module, patch: list[int], batch_size: int, precision: torch.dtype | None) -> float:
    """FLOPs of one training step (forward and backward) on a batch, as PyTorch counts them."""
    images = torch.randn(batch_size, 1, *patch)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", dtype=precision, enabled=precision is not None):
            output = network(images)
        labels = torch.randint(0, output.shape[1], (batch_size, 1, *patch))  # the network's own classes
        DiceCELoss(to_onehot_y=True, softmax=True)(output.float(), labels).backward()
    return counter.get_total_flops()


def _figures(history: pd.DataFrame, voxels: int, flops_per_sample: float, ceiling: float) -> dict[str, float]:
    samples = statistics.median(history.samples_per_s)
    figures = {
        "samples/s": samples,
        "Mvoxels/s": samples * voxels / 1e6,
        "data wait": statistics.median(history.data_wait_fraction),
        "FLOP/s share": samples * flops_per_sample / ceiling,
    }
    if "peak_gpu_memory_gib" in history:
        figures["peak GPU GiB"] = float(history.peak_gpu_memory_gib.max())
    return figures


def measure_plain(args: argparse.Namespace, ceiling: float) -> dict[str, float]:
    train_loader, _ = plain.loaders(args.prep, args.split)
    model, loss_function = plain.network(), DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    rows = []
    for _ in range(args.epochs):
        waiting, steps, started = 0.0, 0, time.perf_counter()
        asked = started
        for batch in train_loader:
            waiting += time.perf_counter() - asked
            optimizer.zero_grad()
            loss_function(model(batch["image"]), batch["label"]).backward()
            optimizer.step()
            steps += 1
            asked = time.perf_counter()
        seconds = time.perf_counter() - started
        rows.append({"samples_per_s": steps * 4 / seconds, "data_wait_fraction": waiting / seconds})
    flops = step_flops(plain.network(), list(plain.PATCH), 1, None)
    return _figures(pd.DataFrame(rows[1:]), math.prod(plain.PATCH), flops, ceiling)


def measure_medseg(
    args: argparse.Namespace, params: Params, device: torch.device
) -> tuple[dict[str, float], torch.dtype]:
    """The figures, and the precision whose ceiling they are measured against."""
    params.train = params.train.model_copy(update={"epochs": args.epochs, "val_every": args.epochs})
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
        train(args.prep, args.split, Path(scratch) / "models", params)
        history = pd.read_csv(Path(scratch) / "models" / "history.csv").iloc[1:]
        network, description = load_model(Path(scratch) / "models" / "model.pt")
    patch = description.patch_size
    precision = StepPlan(**description.step_plan).dtype  # what the probe chose on this device
    flops = step_flops(network.train(), patch, 1, precision)
    dtype = precision or torch.float32
    return _figures(history, math.prod(patch), flops, matmul_ceiling(dtype, device)), dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prep", type=Path, default=Path("data/preprocessed"))
    parser.add_argument("--split", type=Path, default=Path("data/split.json"))
    parser.add_argument("--epochs", type=int, default=4, help="at least 2: the first is not counted")
    parser.add_argument("--variant", action="append", default=[], help="KEY=VALUE[;KEY=VALUE...] over the params")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain MONAI loop")
    parser.add_argument("--results", type=Path, default=record.RESULTS / "train_speed.csv")
    parser.add_argument("--no-record", action="store_true", help="print the figures, append them nowhere")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"{name}: medians of epochs 2-{args.epochs}; float32 matrix-multiply ceiling", end="")
    print(f" {matmul_ceiling(torch.float32, device) / 1e9:.0f} GFLOP/s", flush=True)

    rows = []

    def show(label: str, figures: dict[str, float], reference: dict[str, float] | None, dtype: torch.dtype) -> None:
        text = ", ".join(f"{k} {v:.3g}" for k, v in figures.items())
        ratio = (
            f" ({figures['Mvoxels/s'] / reference['Mvoxels/s']:.2f}x the plain loop's voxels/s)" if reference else ""
        )
        print(f"  {label}: {text}{ratio}", flush=True)
        rows.append(
            {
                "configuration": label,
                "samples_per_s": f"{figures['samples/s']:.3g}",
                "mvoxels_per_s": f"{figures['Mvoxels/s']:.3g}",
                "vs_plain_loop": f"{figures['Mvoxels/s'] / reference['Mvoxels/s']:.2f}" if reference else "",
                "data_wait": f"{figures['data wait']:.3f}",
                "precision": str(dtype).removeprefix("torch."),
                "flops_share": f"{figures['FLOP/s share']:.2g}",
                "ceiling_gflops": f"{matmul_ceiling(dtype, device) / 1e9:.0f}",
            }
        )

    reference = None
    if not args.no_plain:
        reference = measure_plain(args, matmul_ceiling(torch.float32, device))
        show("plain MONAI loop", reference, None, torch.float32)
    params = load_params(args.params)
    for variant in ["", *args.variant]:
        figures, dtype = measure_medseg(args, with_overrides(params, variant.split(";")), device)
        show(f"{args.params}{' with ' + variant if variant else ''}", figures, reference, dtype)
    if not args.no_record:
        record.append("train_speed.csv", rows, name if device.type == "cuda" else None, path=args.results)


if __name__ == "__main__":
    main()
