"""Runs in the terminal: a table of an experiment's runs, and two or more runs compared."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from rich.console import Console
from rich.table import Table

from pipeline.errors import MedsegError
from pipeline.tracking.registry import WHY
from pipeline.tracking.runs import configure

# per-run noise, not choices: left out of the "params that differ" columns
VOLATILE_PARAMS = ("env.", "data.source")


def _client() -> MlflowClient:
    return MlflowClient(configure())


def _duration(run: Run) -> str:
    if not run.info.end_time:
        return "running"
    seconds = (run.info.end_time - run.info.start_time) / 1000
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _aliases(client: MlflowClient) -> dict[str, tuple[str, str]]:
    """Run id to ``name@alias`` (or ``name v3`` where the version has no alias) of its registered versions, and why
    each alias stands there (as the registry recorded it)."""
    aliases: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for model in client.search_registered_models():
        for alias, version in model.aliases.items():
            aliases.setdefault((model.name, str(version)), []).append((alias, model.tags.get(WHY.format(alias), "")))
    labels: dict[str, list[str]] = {}
    whys: dict[str, list[str]] = {}
    for version in client.search_model_versions():
        named = sorted(aliases.get((version.name, str(version.version)), []))
        labels.setdefault(version.run_id, []).extend(
            [f"{version.name}@{alias}" for alias, _ in named] or [f"{version.name} v{version.version}"]
        )
        whys.setdefault(version.run_id, []).extend(f"{alias}: {why}" for alias, why in named if why)
    return {run_id: (", ".join(found), "; ".join(whys[run_id])) for run_id, found in labels.items()}


def find_run(client: MlflowClient, run_id: str) -> Run:
    """A run by its id or a unique prefix of it (as the table shows them)."""
    if len(run_id) == 32:
        try:
            return client.get_run(run_id)
        except Exception:
            pass
    experiments = [e.experiment_id for e in client.search_experiments()]
    matches = [r for r in client.search_runs(experiments, max_results=5000) if r.info.run_id.startswith(run_id)]
    if len(matches) != 1:
        problem = "no run" if not matches else f"{len(matches)} runs"
        raise MedsegError(f"run {run_id}: {problem} with that id in MLflow at {configure()}")
    return matches[0]


def runs_table(experiment: str | None = None) -> pd.DataFrame:
    """One row per run, newest first: identity, lineage, the params that differ between the runs, Dice, alias and
    why it stands there."""
    client = _client()
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise MedsegError(f"experiment {experiment}: not in MLflow at {configure()}")
        experiments = [found.experiment_id]
    else:
        experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=1000)
    aliases = _aliases(client) if runs else {}
    params = pd.DataFrame([r.data.params for r in runs])
    differing = [c for c in params.columns if not c.startswith(VOLATILE_PARAMS) and params[c].nunique(dropna=False) > 1]
    rows = []
    for run, (_, run_params) in zip(runs, params.iterrows()):
        tags, metrics = run.data.tags, run.data.metrics
        commit = tags.get("mlflow.source.git.commit", "")[:8]
        dice = {
            k: round(v, 4)
            for k, v in sorted(metrics.items())
            if (k.startswith("val_dice_") or k.startswith("eval_dice_")) and not k.endswith(("_median", "_std"))
        }
        rows.append(
            {
                "id": run.info.run_id[:8],
                "start": datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M"),
                "status": run.info.status,
                "duration": _duration(run),
                "commit": commit + ("*" if tags.get("git.dirty") == "true" else ""),
                "raw data": tags.get("dvc.raw_data_md5", "")[:8],
                **{c: run_params.get(c) for c in differing},
                **dice,
                "alias": aliases.get(run.info.run_id, ("", ""))[0],
                "why": aliases.get(run.info.run_id, ("", ""))[1],
            }
        )
    return pd.DataFrame(rows)


def compare(run_ids: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Params side by side where they differ; the latest metrics side by side with each run's delta to the first."""
    client = _client()
    runs = [find_run(client, run_id) for run_id in run_ids]
    names = [r.info.run_id[:8] for r in runs]
    params = pd.DataFrame({n: r.data.params for n, r in zip(names, runs)})
    params = params[params.nunique(axis=1, dropna=False) > 1].sort_index()
    metrics = pd.DataFrame(
        {n: {k: v for k, v in r.data.metrics.items() if not k.startswith("system/")} for n, r in zip(names, runs)}
    ).sort_index()
    for name in names[1:]:
        metrics[f"{name} - {names[0]}"] = metrics[name] - metrics[names[0]]
    return params, metrics


def print_frame(frame: pd.DataFrame, title: str, index: bool = False) -> None:
    table = Table(title=title, show_lines=False)
    columns = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    for column in columns:
        table.add_column(column, overflow="fold")
    for key, row in frame.iterrows():
        cells = [_cell(v) for v in row.tolist()]
        table.add_row(*([str(key)] if index else []), *cells)
    Console(width=max(200, Console().width)).print(table)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
