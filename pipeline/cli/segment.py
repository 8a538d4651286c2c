"""``medseg segment``: a user's volumes, here or on Ray workers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import app


@app.command()
def segment(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Image files (NIfTI, NRRD, MetaImage), folders of them, or DICOM series folders."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the label maps.")],
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            "-m",
            help="A model file, a bundle folder from `medseg export`, or an MLflow URI (models:/NAME@ALIAS, runs:/ID/model).",
        ),
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
    from pipeline.tracking.models import local_model_file

    model = local_model_file(model)  # an MLflow URI downloaded once, here, for every engine and worker
    if engine == "ray":
        from pipeline.inference.bulk import Cluster, Options, segment_bulk

        cluster = Cluster(address, workers, threads_per_worker, gpus_per_worker)
        options = Options(output_format, tta, probabilities)
        summary = segment_bulk(inputs, output, model, series, options, cluster, keep_other_models)
        failures = summary.failures
        typer.echo(
            f"{summary.done} segmented, {summary.skipped} skipped (finished earlier"
            f"{'' if keep_other_models else ' with this model'}), {len(failures)} failed; manifest: {summary.manifest}"
        )
    elif engine == "local":
        from pipeline.inference.segment import segment as run

        failures = run(inputs, output, model, series, output_format, tta, probabilities)
    else:
        raise typer.BadParameter(f"{engine}: choose local or ray", param_hint="--engine")
    for path, reason in failures:  # most reasons already begin with the file they name
        typer.secho(f"failed: {reason if reason.startswith(str(path)) else f'{path}: {reason}'}", fg="red", err=True)
    if failures:
        raise typer.Exit(1)
