"""Where one volume's segmentation time goes: reading, preparing, the network, resampling back, writing.

    python benchmarks/segment_phases.py MODEL VOLUME [--threads 1 2] 2>/dev/null

The phases of ``medseg segment`` on one volume (``segment.segment_case`` done step by step), each timed, with
torch's and ITK's threads set to each ``--threads`` in turn (a Ray worker's ``--threads-per-worker``). Run it on
the CT archive that ``segment_speed.py --archive DIR`` writes (``DIR/model.pt``, ``DIR/volumes/ct_000.nii.gz``)
to see what limits a worker: I/O, resampling or the network. The figures are appended to
``benchmarks/results/segment_phases.csv`` (``--no-record`` only prints them).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import record


def phases(model_path: Path, volume: Path, out_dir: Path) -> dict[str, float]:
    import numpy as np
    import torch

    from pipeline.data.transforms import IMAGE, prepare
    from pipeline.data.volumes import read_image, to_metatensor
    from pipeline.inference import predictor
    from pipeline.inference.segment import find_sources, label_dtype, open_model, write_label_map

    model = open_model(model_path)
    source = find_sources([volume], None)[0]
    seconds, started = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal started
        seconds[name] = time.perf_counter() - started
        started = time.perf_counter()

    reference = read_image(source.path)
    image = to_metatensor(reference)
    lap("read and decompress")
    prepared = prepare(model.description.preprocess, (IMAGE,))({IMAGE: image})[IMAGE]
    lap("prepare (reorient, resample to the model's spacing, normalise)")
    probabilities = predictor.sliding_window_probabilities(model.network, prepared.as_tensor()[None], model.description)
    model_grid = probabilities[0].to("cpu", torch.float16)
    lap("network (sliding windows, softmax)")
    classes, _ = predictor.on_input_grid(model_grid, prepared.affine, image, False)
    lap("resample back onto the input's grid, class by class")
    values = model.description.label_values
    labels = np.asarray(values, dtype=label_dtype(values))[classes]
    write_label_map(labels, source, reference, out_dir / source.output_name)
    lap("write and compress")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("volume", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-record", action="store_true", help="print the figures, append them nowhere")
    args = parser.parse_args()

    import SimpleITK as sitk
    import torch

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        with tempfile.TemporaryDirectory() as scratch:
            seconds = phases(args.model, args.volume, Path(scratch))
        total = sum(seconds.values())
        for phase, value in [*seconds.items(), ("total", total)]:
            print(f"{threads} thread(s)  {phase:60s} {value:6.1f} s  {value / total:6.1%}")
            rows.append(
                {"threads": threads, "phase": phase, "seconds": f"{value:.1f}", "share": f"{value / total:.0%}"}
            )
    if not args.no_record:
        record.append("segment_phases.csv", rows)


if __name__ == "__main__":
    main()
