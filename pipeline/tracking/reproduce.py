"""``medseg reproduce RUN_ID``: the run's commit in a fresh git worktree, its data back from DVC, ``dvc repro``
there, and the new metrics against the logged ones. The reproduction is logged to a store of its own (beside the
worktree, or one named), with registration off: the registry stays as it was."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

from pipeline.errors import MedsegError
from pipeline.provenance import RAW_DATA, dvc_output_hash
from pipeline.tracking.listing import _client, find_run
from pipeline.tracking.registry import NO_REGISTRY

log = logging.getLogger(__name__)

# CPU runs of the same commit, data and params are bit-identical; GPU kernels are not (pass a larger tolerance)
DEFAULT_TOLERANCE = 1e-6


class ReproduceError(MedsegError):
    """The run cannot be reproduced, and why."""


@dataclass
class Reproduction:
    run_id: str
    worktree: Path
    tracking_uri: str  # where the reproduction's own run went
    comparison: pd.DataFrame  # metric, logged, reproduced, difference, within tolerance

    @property
    def matches(self) -> bool:
        return bool(self.comparison.within_tolerance.all())


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise ReproduceError(f"{' '.join(command)} in {cwd} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout


def _absolute_uri(uri: str) -> str:
    """A relative SQLite store (``sqlite:///mlflow.db``) named absolutely, so the worktree logs to the one meant."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def _restore_data(worktree: Path, run_id: str, raw_hash: str, source_repo: Path, remote: str | None, env) -> None:
    """The run's own ``dvc.lock`` (logged with it) in the worktree, then ``data/raw`` from this repository's
    cache or else from the remote; refused, with the reason, when neither holds that hash."""
    lock = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/inputs/dvc.lock", dst_path=tempfile.mkdtemp()))
    if dvc_output_hash(RAW_DATA, lock) != raw_hash:
        raise ReproduceError(f"run {run_id}: its logged dvc.lock does not record {RAW_DATA} as {raw_hash}")
    shutil.copy(lock, worktree / "dvc.lock")
    dvc = [sys.executable, "-m", "dvc"]
    cache = source_repo / ".dvc" / "cache"
    if cache.is_dir():
        _run([*dvc, "cache", "dir", "--local", str(cache)], worktree, env)
    attempts = [[*dvc, "checkout", RAW_DATA], [*dvc, "pull", *(["-r", remote] if remote else []), RAW_DATA]]
    problems = []
    for command in attempts:
        result = subprocess.run(command, cwd=worktree, env=env, capture_output=True, text=True)
        if result.returncode == 0 and (worktree / RAW_DATA).is_dir():
            return
        problems.append(f"`{' '.join(command[2:])}`: {(result.stdout + result.stderr).strip()[-500:]}")
    raise ReproduceError(
        f"run {run_id}: {RAW_DATA} with DVC hash {raw_hash} is neither in the cache {cache} nor on the remote; "
        + "; ".join(problems)
    )


def _compare(run_id: str, worktree: Path, tolerance: float) -> pd.DataFrame:
    logged = _client().get_run(run_id).data.metrics
    metrics = json.loads((worktree / "reports" / "metrics.json").read_text())
    reproduced = {f"eval_{k}": v for k, v in metrics.items() if isinstance(v, float)}
    last = pd.read_csv(worktree / "models" / "history.csv").iloc[-1]
    reproduced.update({k: float(last[k]) for k in ("train_loss", "val_dice_mean") if k in last})
    rows = []
    for name, value in sorted(reproduced.items()):
        if name in logged:
            difference = abs(value - logged[name])
            rows.append((name, logged[name], value, difference, bool(difference <= tolerance)))
    if not rows:
        raise ReproduceError(f"run {run_id}: logged none of the metrics the reproduction wrote")
    return pd.DataFrame(rows, columns=["metric", "logged", "reproduced", "difference", "within_tolerance"])


def reproduce(
    run_id: str,
    workdir: Path | None = None,
    remote: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    allow_dirty: bool = False,
    tracking_uri: str | None = None,
) -> Reproduction:
    """``tracking_uri``: the store for the reproduction's run; by default ``mlflow.db`` beside the worktree, so the
    run's own store is only read. Evaluations there register nothing (``MEDSEG_NO_REGISTRY``, for commits that know
    it; the separate store keeps the registry of older commits' reproductions apart too)."""
    run = find_run(_client(), run_id)
    run_id, tags = run.info.run_id, run.data.tags
    commit, raw_hash = tags.get("mlflow.source.git.commit"), tags.get("dvc.raw_data_md5")
    if not commit:
        raise ReproduceError(f"run {run_id}: no git commit logged (it did not run in a git repository)")
    if tags.get("git.dirty") == "true" and not allow_dirty:
        raise ReproduceError(
            f"run {run_id}: ran with uncommitted changes to {commit[:8]}, so its code is not in git "
            "(--allow-dirty reproduces the commit anyway)"
        )
    if not raw_hash:
        raise ReproduceError(f"run {run_id}: no DVC hash of {RAW_DATA} logged (dvc.lock was absent when it ran)")
    source_repo = Path(_run(["git", "rev-parse", "--show-toplevel"], Path.cwd()).strip())
    worktree = Path(workdir or tempfile.mkdtemp(prefix=f"medseg-reproduce-{run_id[:8]}-")) / "repo"
    _run(["git", "worktree", "add", "--detach", str(worktree), commit], source_repo)
    store = _absolute_uri(tracking_uri or f"sqlite:///{worktree.parent / 'mlflow.db'}")
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, NO_REGISTRY: "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    _restore_data(worktree, run_id, raw_hash, source_repo, remote, env)
    log.info("reproducing run %s at %s in %s", run_id, commit[:8], worktree)
    _run([sys.executable, "-m", "dvc", "repro"], worktree, env)
    return Reproduction(run_id, worktree, store, _compare(run_id, worktree, tolerance))
