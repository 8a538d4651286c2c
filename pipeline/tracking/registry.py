"""The model registry: each evaluated model registered per dataset, the best on the same validation split holding
alias ``champion`` and the latest one that did not beat it ``challenger``; ``models:/`` and ``runs:/`` URIs resolved
back to a self-describing model file."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient

from pipeline.errors import ModelError
from pipeline.tracking.offline import RunLog
from pipeline.tracking.provenance import SPLIT_TAG
from pipeline.tracking.runs import configure, describe_error

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
SCORE = "eval_dice_mean"  # the evaluation's mean Dice over classes and validation cases
EVALUATED_SPLIT = "registry.split_sha256"  # the validation split the score was measured on
MODEL_URI_SCHEMES = ("models:/", "runs:/")
MODEL_NAME = "model"  # the MLflow model's name in its run (runs:/<id>/model)
REGISTER_OP = "register"  # a registration kept for `medseg runs sync` while the server was away


def registered_name(configured: str | None, dataset: str) -> str:
    """``configured``, or ``medseg-<dataset>`` in lower case with dashes (``medseg-hippocampus``)."""
    return configured or "medseg-" + "-".join(dataset.lower().split())


@dataclass
class Decision:
    model: str
    version: str
    alias: str
    reason: str
    score: float
    champion_score: float | None


def _input_example(network: torch.nn.Module, patch_size: list[int]) -> tuple[np.ndarray, np.ndarray]:
    example = np.zeros((1, 1, *patch_size), dtype=np.float32)
    with torch.no_grad():
        output = network(torch.from_numpy(example).to(next(network.parameters()).device))
    return example, output.float().cpu().numpy()


def _log_model(run_id: str, network: torch.nn.Module, model_file: Path, patch_size: list[int], name: str) -> str:
    """An MLflow PyTorch model (signature, input example) with ``model.pt`` inside; returns its version."""
    example, output = _input_example(network, patch_size)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            network,
            name=MODEL_NAME,
            signature=mlflow.models.infer_signature(example, output),
            input_example=example,
            extra_files=[str(model_file)],
            pip_requirements=[f"torch=={torch.__version__}", f"monai=={version('monai')}"],
            registered_model_name=name,
        )
    return str(info.registered_model_version)


@dataclass(frozen=True)
class _Version:
    number: int
    run_id: str
    score: float | None
    split: str | None


def _versions(client: MlflowClient, name: str) -> list[_Version]:
    found = []
    for registered in client.search_model_versions(f"name='{name}'"):
        data = client.get_run(registered.run_id).data
        split = data.tags.get(EVALUATED_SPLIT, data.tags.get(SPLIT_TAG))  # versions registered before the tag existed
        found.append(_Version(int(registered.version), registered.run_id, data.metrics.get(SCORE), split))
    return sorted(found, key=lambda v: v.number)


def _holders(client: MlflowClient, name: str) -> dict[str, int]:
    aliases = client.get_registered_model(name).aliases
    return {alias: int(number) for alias, number in aliases.items() if alias in (CHAMPION, CHALLENGER)}


def _best(versions: list[_Version]) -> _Version:
    """The highest score; of equal scores, the older version."""
    return max(versions, key=lambda v: (v.score, -v.number))


def _target(versions: list[_Version], champion: int | None) -> dict[str, int]:
    """Where the aliases belong: ``champion`` on the best score on the champion's validation split (the oldest
    scored version's while there is no champion), ties to the older version; ``challenger`` on the newest other
    scored version. A function of the registered versions alone, so every evaluation computes the same answer."""
    scored = [v for v in versions if v.score is not None]
    if not scored:
        return {}
    by_number = {v.number: v for v in scored}
    reference = by_number[champion].split if champion in by_number else scored[0].split
    best = _best([v for v in scored if v.split == reference])
    others = [v for v in scored if v.number != best.number]
    return {CHAMPION: best.number, **({CHALLENGER: others[-1].number} if others else {})}


def _settle(client: MlflowClient, name: str) -> tuple[dict[str, int], list[_Version]]:
    """Move the aliases to their target until a fresh look finds them there. MLflow has no compare-and-set, but
    since every evaluation aims at the same target and checks after its own last move, the last one to move an
    alias corrects whatever an evaluation with an older view wrote before it."""
    for _ in range(10):
        versions, holders = _versions(client, name), _holders(client, name)
        target = _target(versions, holders.get(CHAMPION))
        if all(holders.get(alias) == number for alias, number in target.items()):
            return target, versions
        for alias, number in target.items():
            client.set_registered_model_alias(name, alias, str(number))
        time.sleep(random.uniform(0.1, 0.3))
    log.warning("%s: the aliases kept moving under concurrent evaluations; look at them in the registry", name)
    return target, versions


def _reason(number: int, target: dict[str, int], versions: list[_Version]) -> tuple[str, str, float | None]:
    """This version's alias, why, and the score it was measured against."""
    by_number = {v.number: v for v in versions}
    own, champion = by_number[number], by_number[target[CHAMPION]]
    if champion.number == number:
        rivals = [v for v in versions if v.number != number and v.split == own.split and v.score is not None]
        if not rivals:
            return CHAMPION, "no champion yet", None
        runner_up = _best(rivals)
        return (
            CHAMPION,
            f"{SCORE} {own.score:.4f} beats version {runner_up.number}'s {runner_up.score:.4f}",
            runner_up.score,
        )
    alias = CHALLENGER if target.get(CHALLENGER) == number else "none (a newer version is challenger)"
    if champion.split != own.split:
        return alias, f"champion (version {champion.number}) was evaluated on another validation split", champion.score
    return (
        alias,
        f"{SCORE} {own.score:.4f} does not beat version {champion.number}'s {champion.score:.4f}",
        champion.score,
    )


def register(
    run: RunLog, network: torch.nn.Module, model_file: Path, patch_size: list[int], name: str, score: float, split: str
) -> Decision | None:
    """Register the run's model under ``name`` and settle the aliases: ``champion`` for the best score on the
    champion's validation split (``split``: its hash), ``challenger`` for the newest other one. The run carries its
    ``eval_dice_mean`` and split before the version exists, so that every evaluation looking at the registry sees
    them; this version's alias, the reason and both scores go to it after."""
    if not run.online:
        log.warning("%s not registered yet: the tracking server did not answer; `medseg runs sync` will", name)
        run.set_tags({"registry.decision": "deferred: the tracking server did not answer; registered by sync"})
        later = {"name": name, "score": score, "split": split, "patch_size": patch_size, "experiment": run.experiment}
        run.defer({"op": REGISTER_OP, **later}, model_file)
        return None
    run.set_tags({EVALUATED_SPLIT: split})
    model_version = _log_model(run.run_id, network, model_file, patch_size, name)
    target, versions = _settle(run.client, name)
    alias, reason, champion_score = _reason(int(model_version), target, versions)
    decision = Decision(name, model_version, alias, reason, score, champion_score)
    run.set_tags({f"registry.{k}": v for k, v in asdict(decision).items() if k not in ("score", "champion_score")})
    run.log_metrics(
        {"registry.score": score, **({"registry.champion_score": champion_score} if champion_score is not None else {})}
    )
    log.info("registered %s version %s as %s: %s", name, model_version, alias, reason)
    return decision


def is_model_uri(text: str) -> bool:
    return str(text).startswith(MODEL_URI_SCHEMES)


def download_model_file(uri: str) -> Path:
    """The ``model.pt`` that a ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/ID/model`` URI holds."""
    tracking_uri = configure()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as err:  # MLflow raises several types for an unknown name, alias, version or run
        raise ModelError(f"{uri}: does not resolve in MLflow at {tracking_uri} ({describe_error(err)[:300]})") from None
    found = sorted(local.rglob("model.pt")) if local.is_dir() else [local]
    if not found:
        raise ModelError(f"{uri}: resolves in MLflow at {tracking_uri}, but holds no model.pt")
    return found[0]
