"""Commands over MLflow: runs (list, compare, alias, sync) and reproduce."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import app

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
    from pipeline.stages.evaluate import DEFERRED
    from pipeline.tracking.sync import sync

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
