"""How reliably the probe's few timed steps tell a compiled training step from a plain one on this machine.

    python benchmarks/probe_noise.py [--params params.yaml] [--prep data/preprocessed] [--trials 8]

Builds the network, patch and batch that the plan in ``--prep`` (``dvc repro preprocess``) and the params give,
in float32, with random batches of that shape (a step's time does not depend on the values), and times the
plain against the compiled step with the probe's own ``Prober``, ``--trials`` times in one process: one block of
steps after the other (``Prober.time`` twice, as the probe did before), then in turns (``Prober.side_by_side``,
as it does now). Prints each trial's compiled/plain ratio both ways; appends their range, and how many trials
would have compiled (ratio under ``FASTER``), to ``benchmarks/results/probe_noise.csv``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
from pathlib import Path

import record
import torch

from pipeline.networks.model import build_network, network_spec
from pipeline.networks.plan import resolve
from pipeline.params import load_params
from pipeline.training.losses import build_loss
from pipeline.training.probe import FASTER, Prober


def prober_for_plan(params_path: Path, prep: Path) -> tuple[Prober, str]:
    params = load_params(params_path)
    plan = json.loads((prep / "plan.json").read_text())
    labels = json.loads((prep / "dataset.json").read_text())["labels"]
    configuration = resolve(plan["configurations"][plan["configuration"]], params.train, plan["spacing"])
    patch, batch = configuration["patch_size"], configuration["batch_size"]
    network = build_network(network_spec(params, len(labels), len(patch), configuration))
    batches = itertools.repeat(
        {"image": torch.randn(batch, 1, *patch), "label": torch.randint(0, len(labels), (batch, 1, *patch))}
    )
    loss = build_loss(params.train.loss, params.train.loss_options)
    prober = Prober(network, lambda threads: batches, 0, loss, lambda weights: torch.optim.AdamW(weights, 1e-3))
    shape = f"{configuration['network']} {'x'.join(map(str, patch))}, batch {batch}, float32"
    return prober, shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prep", type=Path, default=Path("data/preprocessed"))
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--no-record", action="store_true", help="print the figures, append them nowhere")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    prober, shape = prober_for_plan(args.params, args.prep)
    _, compile_s = prober.time(None, True)
    print(f"{args.prep} ({shape}): compiled in {compile_s:.0f} s", flush=True)
    ratios: dict[str, list[float]] = {"one block after the other": [], "in turns": []}
    for trial in range(args.trials):
        (plain_s, _), (compiled_s, _) = prober.time(None, False), prober.time(None, True)
        ratios["one block after the other"].append(compiled_s / plain_s)
        (plain_s, _), (compiled_s, _) = prober.side_by_side([(None, False), (None, True)])
        ratios["in turns"].append(compiled_s / plain_s)
        print(f"  trial {trial + 1}: " + ", ".join(f"{way} {r[-1]:.3f}" for way, r in ratios.items()), flush=True)
    rows = [
        {
            "plan": f"{args.prep} ({shape})",
            "timing": way,
            "trials": len(values),
            "ratio_min": f"{min(values):.3f}",
            "ratio_median": f"{statistics.median(values):.3f}",
            "ratio_max": f"{max(values):.3f}",
            "trials_compiling": sum(value < FASTER for value in values),
        }
        for way, values in ratios.items()
    ]
    for row in rows:
        print("  " + ", ".join(f"{k} {v}" for k, v in row.items()))
    if not args.no_record:
        record.append("probe_noise.csv", rows)


if __name__ == "__main__":
    main()
