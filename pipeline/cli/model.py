"""Commands that make and judge models: train, evaluate, crossval, evaluate-folders, export, doctor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import ParamsOption, app
from pipeline.params import load_params


@app.command()
def train(prep_dir: Path, split_json: Path, out_dir: Path, params: ParamsOption = Path("params.yaml")) -> None:
    """Train the U-Net and write OUT_DIR/model.pt, a model that carries its own configuration."""
    from pipeline.stages.train import train as run

    final = run(prep_dir, split_json, out_dir, load_params(params))
    typer.echo("final epoch: " + ", ".join(f"{k}={v:.4g}" for k, v in final.items()))


@app.command()
def evaluate(
    model: Path,
    prep_dir: Path,
    split_json: Path,
    out_dir: Path,
    run_file: Annotated[Path | None, typer.Option(help="MLflow run to add the results to.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Segment the validation cases from their raw files; write per-case and summary scores and report.html."""
    from pipeline.config import Params
    from pipeline.stages.evaluate import evaluate as run

    config = load_params(params) if params.is_file() else Params()  # the model file needs no params
    evaluate_config, tta = config.evaluate, config.inference.tta
    summary = run(model, prep_dir, split_json, out_dir, run_file, evaluate_config, tta=tta, tracking=config.mlflow)
    typer.echo(", ".join(f"{k}={v:.4g}" for k, v in summary.items() if isinstance(v, float)))


@app.command()
def crossval(prep_dir: Path, out_dir: Path, params: ParamsOption = Path("params.yaml")) -> None:
    """Train and evaluate every fold of split.n_folds into OUT_DIR/fold_<k>: one MLflow parent run with a nested run
    per fold and the mean and std over folds. Run it again to resume after an interruption."""
    from pipeline.stages.crossval import cross_validate

    summary = cross_validate(prep_dir, out_dir, load_params(params))
    mean, std = summary["eval_dice_mean_mean"], summary["eval_dice_mean_std"]
    typer.echo(f"mean Dice over folds: {mean:.4f} +- {std:.4f} (per fold: {out_dir / 'folds.csv'})")


@app.command("evaluate-folders")
def evaluate_folders(
    pred_dir: Annotated[Path, typer.Argument(help="Predicted label maps (NIfTI, NRRD, MetaImage, PNG).")],
    ref_dir: Annotated[Path, typer.Argument(help="Reference label maps, matched to the predictions by file name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the CSV, metrics.json and report.")],
    labels: Annotated[
        str | None,
        typer.Option(help="Classes to score: 1=liver,2=spine, or JSON (inline, or a file such as a dataset.json)."),
    ] = None,
    nsd_tolerance_mm: Annotated[
        list[float] | None, typer.Option("--nsd-tolerance", help="Surface Dice tolerance in mm; once, or per class.")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="The images, matched by name, as background of the report's pictures.")
    ] = None,
) -> None:
    """Score any two folders of label maps (this pipeline's, nnU-Net's, TotalSegmentator's) with the same metrics."""
    from pipeline.config import EvaluateConfig
    from pipeline.evaluation.folders import evaluate_folders as run
    from pipeline.evaluation.folders import parse_labels

    tolerance = EvaluateConfig().nsd_tolerance_mm if not nsd_tolerance_mm else nsd_tolerance_mm
    tolerance = tolerance[0] if isinstance(tolerance, list) and len(tolerance) == 1 else tolerance
    summary, matched = run(pred_dir, ref_dir, output, parse_labels(labels) if labels else None, tolerance, images)
    for folder, names in ((pred_dir, matched.only_predictions), (ref_dir, matched.only_references)):
        for name in names:
            typer.secho(f"not scored: {folder / name}: no file of that name in the other folder", fg="yellow", err=True)
    typer.echo(
        f"{summary['n_cases']} cases: mean Dice {summary['dice_mean']:.4f}, HD95 {summary['hd95_mm_mean']:.2f} mm, "
        f"surface Dice {summary['nsd_mean']:.4f}; report in {output / 'report.html'}"
    )


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="A model file (models/model.pt), a bundle folder or an MLflow URI.")],
    output_format: Annotated[
        str,
        typer.Option("--format", "-f", help="bundle (a MONAI bundle), torchscript or onnx (the network alone)."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write.")],
) -> None:
    """Write MODEL in a form other tools run: a MONAI bundle, or the network as TorchScript or ONNX with model.json."""
    from pipeline.export import export as run
    from pipeline.tracking.models import local_model_file

    for path in run(local_model_file(model), output_format, output):
        typer.echo(f"wrote {path}")


@app.command()
def doctor(params: ParamsOption = Path("params.yaml")) -> None:
    """Check this machine for the default run: Python, torch and its device, libraries, data, tracking store."""
    from pipeline.cli.doctor import run_checks

    checks = run_checks(params)
    for check in checks:
        mark, colour = {"ok": ("ok  ", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "red")}[check.status]
        typer.secho(f"{mark} {check.name:<10} ", fg=colour, nl=False)
        typer.echo(check.detail)
        if check.fix:
            typer.echo(f"{'':15}fix: {check.fix}")
    if any(check.status == "fail" for check in checks):
        raise typer.Exit(1)
