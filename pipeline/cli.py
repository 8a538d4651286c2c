"""The ``medseg`` command: one subcommand per stage, each a thin call of the stage's function."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.config import load_params, params_yaml, render_preset
from pipeline.errors import MedsegError
from pipeline.files import write_text

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Segment CT and MRI volumes with U-Nets.")
ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="Parameters file.")]


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)


@app.command()
def configure(
    preset: Annotated[Path, typer.Argument(help="A preset from configs/, holding only what it changes.")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("params.yaml"),
    overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="KEY=VALUE, e.g. train.epochs=5")] = None,
) -> None:
    """Write the full params file (defaults, overlaid with PRESET and --set values) that DVC tracks."""
    write_text(output, params_yaml(render_preset(preset, overrides or [])))
    typer.echo(f"wrote {output} from {preset}")


@app.command()
def acquire(out_dir: Path, params: ParamsOption = Path("params.yaml")) -> None:
    """Copy or download the raw dataset named by data.source into OUT_DIR."""
    from pipeline.acquire import acquire as run

    run(load_params(params).data.source, out_dir)


@app.command()
def preprocess(raw_dir: Path, out_dir: Path, params: ParamsOption = Path("params.yaml")) -> None:
    """Check, reorient and normalise every case; list the usable ones and the rejected ones."""
    from pipeline.preprocess import preprocess as run

    manifest = run(raw_dir, out_dir, load_params(params).preprocess)
    typer.echo(f"{len(manifest)} cases ready in {out_dir}")


@app.command()
def split(manifest: Path, out_json: Path, params: ParamsOption = Path("params.yaml")) -> None:
    """Assign cases to seeded folds and hold one out for validation."""
    from pipeline.split import split as run

    config = load_params(params)
    result = run(manifest, out_json, config.split, config.seed)
    typer.echo(f"{len(result['train'])} training and {len(result['validation'])} validation cases")


@app.command()
def train(prep_dir: Path, split_json: Path, out_dir: Path, params: ParamsOption = Path("params.yaml")) -> None:
    """Train the U-Net and write OUT_DIR/model.pt, a model that carries its own configuration."""
    from pipeline.train import train as run

    final = run(prep_dir, split_json, out_dir, load_params(params))
    typer.echo("final epoch: " + ", ".join(f"{k}={v:.4g}" for k, v in final.items()))


@app.command()
def evaluate(
    model: Path,
    prep_dir: Path,
    split_json: Path,
    out_dir: Path,
    run_file: Annotated[Path | None, typer.Option(help="MLflow run to add the results to.")] = None,
) -> None:
    """Segment the validation cases from their raw files and write per-case and summary Dice."""
    from pipeline.evaluate import evaluate as run

    summary = run(model, prep_dir, split_json, out_dir, run_file)
    typer.echo(", ".join(f"{k}={v:.4g}" for k, v in summary.items()))


@app.command()
def segment(
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI files, or folders of them.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the label maps.")],
    model: Annotated[Path, typer.Option("--model", "-m")] = Path("models/model.pt"),
) -> None:
    """Write OUTPUT/<input name>: a uint8 label map on exactly the input's grid."""
    from pipeline.segment import segment as run

    failures = run(inputs, output, model)
    for path, reason in failures:
        typer.secho(f"failed: {path}: {reason}", fg="red", err=True)
    if failures:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except MedsegError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)
    except FileNotFoundError as err:  # a stage's input that an earlier stage did not write
        typer.secho(f"error: {err.filename}: no such file or folder", fg="red", err=True)
        sys.exit(2)
