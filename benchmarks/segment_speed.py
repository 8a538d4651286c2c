"""Segmentation speed and memory: seconds per volume and peak resident memory, TTA off and on.

    python benchmarks/segment_speed.py [--model models/model.pt] [--prep data/preprocessed]
        [--split data/split.json] [--cases 20] [--ct-classes 14] [--skip-hippocampus] [--skip-ct] 2>/dev/null
    python benchmarks/segment_speed.py --archive DIR [--copies 20]    (the CT archive of segment_engines.sh)

(a) Hippocampus: the trained model (``--model``; train one with ``dvc repro`` first) segments the
validation cases of ``--split`` from their raw files, as the evaluate stage does: median seconds
per volume (after the first, which warms up), mean foreground Dice, peak memory.
(b) CT: ``../shared/datasets/ct-example/example_ct.nii.gz`` resampled onto a 512x512x300 grid
(0.71x0.59x1.12 mm, int16) and segmented with ``medseg segment`` by an untrained model with a CT
intensity plan at 1.5 mm and ``--ct-classes`` classes: the full-volume buffers, not the network,
set its memory, so the network is tiny and its seconds say little about a real model's.

Each configuration runs in a fresh process, which reports its own peak resident set size
(``getrusage``), so that one configuration's memory does not hide another's. The figures are appended to
``benchmarks/results/segment_speed.csv`` (``--results``; ``--no-record`` only prints them), which the
documentation's Measured page renders.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parents[1]
CT_EXAMPLE = ROOT.parent / "shared" / "datasets" / "ct-example" / "example_ct.nii.gz"
CT_GRID = (512, 512, 300)


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux reports KiB


def hippocampus(model: Path, prep: Path, split_json: Path, cases: int, tta: bool) -> dict[str, float]:
    import numpy as np
    import pandas as pd
    import torch
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    from pipeline.data.dataset import class_indices
    from pipeline.data.volumes import read_image, to_metatensor
    from pipeline.inference.predictor import predict
    from pipeline.networks.model import load_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, description = load_model(model, device)
    n_classes = description.network.out_channels
    manifest = pd.read_csv(prep / "manifest.csv", dtype={"case_id": str}).set_index("case_id")
    raw_dir = Path(json.loads((prep / "dataset.json").read_text())["raw_dir"])
    seconds, dice = [], []
    for case_id in json.loads(split_json.read_text())["validation"][:cases]:
        started = time.perf_counter()
        labels = predict(
            network, description, to_metatensor(read_image(raw_dir / manifest.at[case_id, "raw_image"])), device, tta
        ).labels
        seconds.append(time.perf_counter() - started)
        values = np.rint(read_image_array(raw_dir / manifest.at[case_id, "raw_label"])).astype(np.int64)
        reference = class_indices(description.label_values)[values]
        as_one_hot = [one_hot(torch.from_numpy(a.astype(np.int64))[None, None], n_classes) for a in (labels, reference)]
        dice.append(float(compute_dice(*as_one_hot, include_background=False, ignore_empty=False).mean()))
    return {
        "cases": len(seconds),
        "s_per_volume": statistics.median(seconds[1:] or seconds),
        "dice_mean": float(np.mean(dice)),
        "peak_rss_gib": _peak_rss_gib(),
    }


def read_image_array(path: Path):
    import SimpleITK as sitk

    from pipeline.data.volumes import read_image

    return sitk.GetArrayFromImage(read_image(path)).T


def make_ct(target: Path) -> Path:
    """The abdominal CT example on a 512x512x300 grid over the same extent (linear, int16, -1024 outside)."""
    import SimpleITK as sitk

    source = sitk.ReadImage(str(CT_EXAMPLE))
    spacing = [n * s / m for n, s, m in zip(source.GetSize(), source.GetSpacing(), CT_GRID)]
    resampled = sitk.Resample(
        source, CT_GRID, sitk.Transform(), sitk.sitkLinear, source.GetOrigin(), spacing, source.GetDirection(),
        -1024, sitk.sitkInt16,
    )  # fmt: skip
    sitk.WriteImage(resampled, str(target))
    return target


def ct_model(target: Path, n_classes: int) -> Path:
    """Untrained and tiny (a DynUNet of 2, 4, 8 features): a CT intensity plan (clip to [-1000, 1000] HU, z-score) at 1.5 mm, 96^3 windows."""
    from pipeline.config import Params
    from pipeline.networks.model import build_network, describe, save_model

    # DynUNet: its output head is a 1x1x1 convolution, so the full-resolution cost stays small with many classes
    params = Params.model_validate({"train": {"network": "dynunet", "channels": [2, 4, 8], "num_res_units": 0}})
    plan = {
        "orientation": "RAS",
        "spacing": [1.5, 1.5, 1.5],
        "crop_foreground": True,
        "intensity": {"scheme": "clip_zscore", "low": -1000.0, "high": 1000.0, "mean": 0.0, "std": 500.0},
    }
    labels = {str(i): "background" if i == 0 else f"organ_{i}" for i in range(n_classes)}
    description = describe(params, labels, "CT", plan, [96, 96, 96])
    save_model(target, build_network(description.network), description)
    return target


def ct(model: Path, volume: Path, out_dir: Path, tta: bool, probabilities: bool) -> dict[str, float]:
    from pipeline.inference.segment import segment

    started = time.perf_counter()
    failures = segment([volume], out_dir, model, tta=tta, probabilities=probabilities)
    assert not failures, failures
    return {"s_per_volume": time.perf_counter() - started, "peak_rss_gib": _peak_rss_gib()}


def make_archive(target: Path, copies: int, n_classes: int) -> None:
    """An archive for ``segment_engines.sh``: hard links to one CT (each read and decompressed as its own file)."""
    (target / "volumes").mkdir(parents=True, exist_ok=True)
    volume = make_ct(target / "ct_512x512x300.nii.gz")
    for copy in range(copies):
        (target / "volumes" / f"ct_{copy:03d}.nii.gz").hardlink_to(volume)
    ct_model(target / "model.pt", n_classes)
    print(f"benchmarks/segment_engines.sh {target / 'model.pt'} {target / 'volumes'}")


def _in_child(kind: str, **arguments) -> dict[str, float]:
    """One configuration in a fresh interpreter: its peak memory is its own."""
    command = [sys.executable, __file__, "--child", json.dumps({"kind": kind, **arguments})]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child(spec: dict) -> None:
    logging.disable(logging.WARNING)
    kind = spec.pop("kind")
    paths = {k: Path(v) if isinstance(v, str) else v for k, v in spec.items()}
    print(json.dumps(hippocampus(**paths) if kind == "hippocampus" else ct(**paths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"), help="(a): a trained model file")
    parser.add_argument("--prep", type=Path, default=Path("data/preprocessed"))
    parser.add_argument("--split", type=Path, default=Path("data/split.json"))
    parser.add_argument("--cases", type=int, default=20, help="(a): the first N validation cases")
    parser.add_argument(
        "--ct-classes", type=int, default=14, help="(b): classes of the CT model (14: BTCV's 13 organs)"
    )
    parser.add_argument("--skip-hippocampus", action="store_true")
    parser.add_argument("--skip-ct", action="store_true")
    parser.add_argument("--results", type=Path, default=record.RESULTS / "segment_speed.csv")
    parser.add_argument("--no-record", action="store_true", help="print the figures, append them nowhere")
    parser.add_argument(
        "--archive", type=Path, help="write DIR/volumes (--copies links to the CT of (b)) and DIR/model.pt, then stop"
    )
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(json.loads(args.child))
    if args.archive:
        return make_archive(args.archive, args.copies, args.ct_classes)

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU only, {os.cpu_count()} cores"
    print(f"segmentation on {device}; each configuration in its own process")
    rows = []
    if not args.skip_hippocampus:
        if not args.model.is_file():
            sys.exit(f"{args.model}: no trained model (run `dvc repro`, or pass --model); or use --skip-hippocampus")
        for tta in (False, True):
            figures = _in_child(
                "hippocampus", model=str(args.model.resolve()), prep=str(args.prep.resolve()),
                split_json=str(args.split.resolve()),
                cases=args.cases, tta=tta,
            )  # fmt: skip
            print(
                f"  hippocampus, {figures['cases']} validation cases, TTA {'on ' if tta else 'off'}: "
                f"{figures['s_per_volume']:.3f} s/volume (median), mean Dice {figures['dice_mean']:.4f}, "
                f"peak memory {figures['peak_rss_gib']:.2f} GiB"
            )
            rows.append(
                {
                    "configuration": f"(a) hippocampus, {figures['cases']} validation cases from the raw files, "
                    f"TTA {'on (8 mirrorings)' if tta else 'off'}",
                    "s_per_volume": f"{figures['s_per_volume']:.3g}",
                    "mean_dice": f"{figures['dice_mean']:.4f}",
                    "peak_memory_gib": f"{figures['peak_rss_gib']:.2f}",
                    "note": f"median seconds; model {args.model}",
                }
            )
    if not args.skip_ct:
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            volume, model = make_ct(scratch / "ct_512x512x300.nii"), ct_model(scratch / "ct.pt", args.ct_classes)
            for tta, probabilities in ((False, False), (True, False), (False, True)):
                figures = _in_child(
                    "ct", model=str(model), volume=str(volume), out_dir=str(scratch / "out"), tta=tta,
                    probabilities=probabilities,
                )  # fmt: skip
                print(
                    f"  CT 512x512x300, {args.ct_classes} classes, TTA {'on ' if tta else 'off'}"
                    f"{', with --probabilities' if probabilities else ''}: {figures['s_per_volume']:.1f} s/volume, "
                    f"peak memory {figures['peak_rss_gib']:.2f} GiB"
                )
                rows.append(
                    {
                        "configuration": "(b) CT 512x512x300 (example_ct.nii.gz resampled, int16), "
                        f"{args.ct_classes} classes, medseg segment, "
                        f"TTA {'on' if tta else 'off'}{', --probabilities' if probabilities else ''}",
                        "s_per_volume": f"{figures['s_per_volume']:.3g}",
                        "peak_memory_gib": f"{figures['peak_rss_gib']:.2f}",
                        "note": "an untrained, tiny network",
                    }
                )
    if rows and not args.no_record:
        accelerator = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        record.append("segment_speed.csv", rows, accelerator, path=args.results)


if __name__ == "__main__":
    main()
