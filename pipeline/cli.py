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

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Segment CT and MRI volumes with U-Nets.",
)
ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="Parameters file.")]


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"medseg {version('medseg')}")
        raise typer.Exit()


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
    )


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

    run(load_params(params).data, out_dir)


@app.command()
def preprocess(raw_dir: Path, out_dir: Path, params: ParamsOption = Path("params.yaml")) -> None:
    """Validate and fingerprint every case, plan, then resample, crop and normalise the usable ones."""
    from pipeline.preprocess import preprocess as run

    config = load_params(params)
    manifest = run(raw_dir, out_dir, config.data, config.preprocess)
    typer.echo(f"{len(manifest)} cases ready in {out_dir}")


@app.command()
def validate(
    dataset: Path,
    report: Annotated[Path, typer.Option(help="Where to write the report (CSV).")] = Path("validation.csv"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Check every case of DATASET; exit 1 if any is rejected. Reads params only for the images/labels layout."""
    from pipeline.config import DataConfig
    from pipeline.validate import validate as run

    data = load_params(params).data if params.is_file() else DataConfig()
    result = run(dataset, report, data)
    for row in result[result.status != "ok"].itertuples():
        typer.echo(f"{row.status}: {row.case_id}: {row.file}: {row.reason}")
    counts = result.status.value_counts()
    typer.echo(
        f"{len(result)} cases: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "warning", "rejected"))
        + f"; report in {report}"
    )
    if counts.get("rejected", 0):
        raise typer.Exit(1)


@app.command()
def series(folder: Path) -> None:
    """List the DICOM series under FOLDER: index, description, size, spacing, UID."""
    from pipeline.volumes import find_series

    found = find_series(folder)
    for item in found:
        typer.echo(item.summary())
    if not found:
        typer.echo(f"{folder}: no DICOM series found")
        raise typer.Exit(1)


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="An image file, a DICOM series folder, or a DICOM SEG file.")],
    target: Annotated[Path, typer.Argument(help="Output file; its suffix picks the format (.nii.gz, .nrrd, .mha).")],
    series: Annotated[
        str | None, typer.Option(help="Index, UID or description, where SOURCE (or --reference) holds several series.")
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(help="For a SEG: the folder of the series it segments (default: found beside the SEG)."),
    ] = None,
    overlap: Annotated[
        str,
        typer.Option(help="For a SEG whose segments overlap: refuse, or highest (the highest segment number wins)."),
    ] = "refuse",
) -> None:
    """Convert a DICOM series (or any readable image) to NIfTI, keeping its geometry; a DICOM SEG to a label map
    (value = segment number) on the grid of the series it segments."""
    from pipeline.dicom.seg import convert_segmentation, is_segmentation
    from pipeline.volumes import convert as run

    if is_segmentation(source):
        image = convert_segmentation(source, target, reference, series, overlap)
    else:
        image = run(source, target, series)
    typer.echo(
        f"wrote {target}: {'x'.join(map(str, image.GetSize()))} voxels, {'x'.join(f'{s:.3g}' for s in image.GetSpacing())} mm"
    )


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
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Segment the validation cases from their raw files; write per-case and summary scores and report.html."""
    from pipeline.config import Params
    from pipeline.evaluate import evaluate as run

    config = load_params(params) if params.is_file() else Params()  # the model file needs no params
    evaluate_config, tta = config.evaluate, config.inference.tta
    summary = run(model, prep_dir, split_json, out_dir, run_file, evaluate_config, tta=tta, tracking=config.mlflow)
    typer.echo(", ".join(f"{k}={v:.4g}" for k, v in summary.items() if isinstance(v, float)))


@app.command()
def crossval(prep_dir: Path, out_dir: Path, params: ParamsOption = Path("params.yaml")) -> None:
    """Train and evaluate every fold of split.n_folds into OUT_DIR/fold_<k>: one MLflow parent run with a nested run
    per fold and the mean and std over folds. Run it again to resume after an interruption."""
    from pipeline.crossval import cross_validate

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
def segment(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Image files (NIfTI, NRRD, MetaImage), folders of them, or DICOM series folders."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the label maps.")],
    model: Annotated[
        Path, typer.Option("--model", "-m", help="A model file, or a bundle folder from `medseg export`.")
    ] = Path("models/model.pt"),
    series: Annotated[
        str | None, typer.Option(help="Index, UID or description, where a DICOM folder holds several series.")
    ] = None,
    output_format: Annotated[
        str,
        typer.Option(
            "--format", help="nifti; dicom-seg (a DICOM SEG referencing the input series, <folder>.dcm); or both."
        ),
    ] = "nifti",
    tta: Annotated[
        bool, typer.Option("--tta", help="Mirroring test-time augmentation: probabilities averaged over all flips.")
    ] = False,
    probabilities: Annotated[
        bool,
        typer.Option(
            "--probabilities", help="Also write OUTPUT/<name>_probabilities: uint8 class probabilities x 255."
        ),
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            help="local: one process, here; ray: Ray workers, resumable, with OUTPUT/manifest.csv (extra 'cluster')."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="--engine ray: join this cluster (auto, or ray://HOST:PORT) instead of starting a Ray here."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="--engine ray: workers, each loading the model once.")] = 2,
    threads_per_worker: Annotated[int, typer.Option(min=1, help="--engine ray: CPU threads of each worker.")] = 1,
    gpus_per_worker: Annotated[
        float, typer.Option(min=0, help="--engine ray: GPUs of each worker (0.5: two share one).")
    ] = 0,
    keep_other_models: Annotated[
        bool,
        typer.Option(help="--engine ray: keep outputs that an earlier run wrote with another model (default: redo)."),
    ] = False,
) -> None:
    """Write OUTPUT/<input name>: a label map on exactly the input's grid (or a DICOM SEG, --format), in the smallest
    integer type that holds the model's label values."""
    if engine == "ray":
        from pipeline.bulk import Cluster, Options, segment_bulk

        cluster = Cluster(address, workers, threads_per_worker, gpus_per_worker)
        options = Options(output_format, tta, probabilities)
        summary = segment_bulk(inputs, output, model, series, options, cluster, keep_other_models)
        failures = summary.failures
        typer.echo(
            f"{summary.done} segmented, {summary.skipped} skipped (finished earlier"
            f"{'' if keep_other_models else ' with this model'}), {len(failures)} failed; manifest: {summary.manifest}"
        )
    elif engine == "local":
        from pipeline.segment import segment as run

        failures = run(inputs, output, model, series, output_format, tta, probabilities)
    else:
        raise typer.BadParameter(f"{engine}: choose local or ray", param_hint="--engine")
    for path, reason in failures:  # most reasons already begin with the file they name
        typer.secho(f"failed: {reason if reason.startswith(str(path)) else f'{path}: {reason}'}", fg="red", err=True)
    if failures:
        raise typer.Exit(1)


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="A model file (models/model.pt) or a bundle folder.")],
    output_format: Annotated[
        str,
        typer.Option("--format", "-f", help="bundle (a MONAI bundle), torchscript or onnx (the network alone)."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write.")],
) -> None:
    """Write MODEL in a form other tools run: a MONAI bundle, or the network as TorchScript or ONNX with model.json."""
    from pipeline.export import export as run

    for path in run(model, output_format, output):
        typer.echo(f"wrote {path}")


@app.command()
def doctor(params: ParamsOption = Path("params.yaml")) -> None:
    """Check this machine for the default run: Python, torch and its device, libraries, data, tracking store."""
    from pipeline.doctor import run_checks

    checks = run_checks(params)
    for check in checks:
        mark, colour = {"ok": ("ok  ", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "red")}[check.status]
        typer.secho(f"{mark} {check.name:<10} ", fg=colour, nl=False)
        typer.echo(check.detail)
        if check.fix:
            typer.echo(f"{'':15}fix: {check.fix}")
    if any(check.status == "fail" for check in checks):
        raise typer.Exit(1)


runs_app = typer.Typer(help="The runs in MLflow: list, compare, upload what is pending.", no_args_is_help=False)
app.add_typer(runs_app, name="runs")


@runs_app.callback(invoke_without_command=True)
def runs(
    context: typer.Context,
    experiment: Annotated[str | None, typer.Option("--experiment", "-e", help="Only this experiment's runs.")] = None,
) -> None:
    """A table of runs, newest first: status, lineage, the params that differ, Dice per class, registry alias."""
    if context.invoked_subcommand is not None:
        return
    from pipeline.tracking.listing import print_frame, runs_table

    table = runs_table(experiment)
    if table.empty:
        typer.echo("no runs")
        return
    print_frame(table, f"runs{f' of {experiment}' if experiment else ''}, newest first")


@runs_app.command("compare")
def runs_compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids (or unique prefixes).")],
) -> None:
    """Params side by side (only those that differ), and metrics with their deltas to the first run."""
    from pipeline.tracking.listing import compare, print_frame

    params, metrics = compare(run_ids)
    if params.empty:
        typer.echo("params: the same in every run")
    else:
        print_frame(params, "params that differ", index=True)
    print_frame(metrics, "metrics (latest values; deltas to the first run)", index=True)


@runs_app.command("alias")
def runs_alias(
    model: Annotated[str, typer.Argument(help="The registered model (medseg-hippocampus).")],
    alias: Annotated[str, typer.Argument(help="champion or challenger.")],
    version: Annotated[int, typer.Argument(help="The version to move it to.")],
    note: Annotated[str, typer.Option(help="Why, for whoever looks later.")] = "",
) -> None:
    """Move an alias by hand: recorded with who and when, and kept until a person moves it again or a later version
    scores better on its comparison key."""
    from pipeline.tracking.registry import move_alias

    typer.echo(f"{model}@{alias} -> version {version}: {move_alias(model, alias, version, note)}")


@runs_app.command("sync")
def runs_sync(
    pending: Annotated[Path, typer.Argument(help="The folder of pending runs.")] = Path("models/mlflow_pending"),
) -> None:
    """Upload the metrics and files kept on disk while the tracking server did not answer."""
    from pipeline.evaluate import DEFERRED
    from pipeline.tracking.offline import sync

    done = sync(pending, DEFERRED)
    for key, run_id, count in done:
        typer.echo(f"{key}: {count} pending operations sent to run {run_id}")
    if not done:
        typer.echo(f"nothing pending in {pending}")


@app.command()
def reproduce(
    run_id: Annotated[str, typer.Argument(help="The MLflow run (id, or a unique prefix as `medseg runs` shows it).")],
    workdir: Annotated[
        Path | None, typer.Option(help="Where to make the git worktree (default: a temp folder).")
    ] = None,
    remote: Annotated[str | None, typer.Option(help="DVC remote to pull the data from (default: the default).")] = None,
    tolerance: Annotated[
        float, typer.Option(help="Largest absolute difference of a metric that still matches.")
    ] = 1e-6,
    allow_dirty: Annotated[bool, typer.Option(help="Reproduce a run made with uncommitted changes anyway.")] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow store for the reproduction's run (default: mlflow.db beside the worktree)."),
    ] = None,
) -> None:
    """Check out the run's commit in a fresh worktree, restore its data with DVC, dvc repro, compare the metrics.
    The reproduction logs to a store of its own and registers no model."""
    from pipeline.tracking.listing import print_frame
    from pipeline.tracking.reproduce import reproduce as run

    result = run(run_id, workdir, remote, tolerance, allow_dirty, tracking_uri)
    print_frame(
        result.comparison, f"run {result.run_id} reproduced in {result.worktree} (logged to {result.tracking_uri})"
    )
    verdict = "reproduced: every metric within" if result.matches else "NOT reproduced: metrics differ by more than"
    typer.echo(f"{verdict} {tolerance:g}")
    if not result.matches:
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
