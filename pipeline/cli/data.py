"""Commands that prepare data: configure, acquire, preprocess, validate, series, convert, split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import ParamsOption, app
from pipeline.files import write_text
from pipeline.params import load_params, params_yaml, render_preset


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
    from pipeline.data.acquire import acquire as run

    run(load_params(params).data, out_dir)


@app.command()
def preprocess(raw_dir: Path, out_dir: Path, params: ParamsOption = Path("params.yaml")) -> None:
    """Validate and fingerprint every case, plan, then resample, crop and normalise the usable ones."""
    from pipeline.data.preprocess import preprocess as run

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
    from pipeline.data.validate import validate as run

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
    from pipeline.data.volumes import find_series

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
    from pipeline.data.volumes import convert as run
    from pipeline.dicom.seg import convert_segmentation, is_segmentation

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
    from pipeline.data.split import split as run

    config = load_params(params)
    result = run(manifest, out_json, config.split, config.seed)
    typer.echo(f"{len(result['train'])} training and {len(result['validation'])} validation cases")
