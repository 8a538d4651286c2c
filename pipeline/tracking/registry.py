"""The model registry: one version per run and model file, each evaluation of it recorded on it; aliases that
compare scores only within one comparison key; a person's move of an alias kept; ``models:/`` and ``runs:/`` URIs
resolved back to a self-describing model file."""

from __future__ import annotations

import getpass
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.errors import MedsegError
from pipeline.files import file_digest
from pipeline.networks.model import check_finite
from pipeline.provenance import key_digest
from pipeline.tracking.aliases import CHALLENGER, CHAMPION, SCORE, Move, Version, reason_for, targets
from pipeline.tracking.offline import RunLog
from pipeline.tracking.runs import configure, describe_error

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the MLflow model's name in its run (runs:/<id>/model)
REGISTER_OP = "register"  # a registration kept for `medseg runs sync` while the server was away
NO_REGISTRY = "MEDSEG_NO_REGISTRY"  # set (to anything but 0) by `medseg reproduce`: evaluations register nothing
# version tags: what identifies the version, and its latest evaluation, on which it stands
MODEL_DIGEST = "model_sha256"
KEY = "comparison_key"  # digest of the key.* tags: scores compare only where it is equal
KEY_PREFIX = "key."  # key.split, key.data, key.plan, key.tta, key.postprocess
EVALUATION_PREFIX = "evaluation."  # evaluation.<time in ms>: each evaluation's score, key, alias and reason (JSON)
PLACED = (
    "alias.{}.placed"  # set on a version before medseg moves the alias to it: a holder without it was moved outside
)
OUTSIDE = "someone outside medseg (the MLflow UI or API)"
# registered-model tags, per alias: why it stands where it does, and a person's move (JSON: version, by, at, note)
WHY, MOVED = "alias.{}.why", "alias.{}.moved_by_hand"


def registered_name(configured: str | None, dataset: str) -> str:
    """``configured``, or ``medseg-<dataset>`` in lower case with dashes (``medseg-hippocampus``)."""
    return configured or "medseg-" + "-".join(dataset.lower().split())


def registering() -> bool:
    """False where ``MEDSEG_NO_REGISTRY`` is set: a reproduction must leave the registry as it found it."""
    return os.environ.get(NO_REGISTRY, "0") == "0"


@dataclass
class Decision:
    model: str
    version: str
    alias: str
    reason: str
    score: float
    champion_score: float | None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _input_example(network: torch.nn.Module, patch_size: list[int]) -> tuple[np.ndarray, np.ndarray]:
    example = np.zeros((1, 1, *patch_size), dtype=np.float32)
    with torch.no_grad():
        output = network(torch.from_numpy(example).to(next(network.parameters()).device))
    return example, output.float().cpu().numpy()


def _log_model(run_id: str, network: torch.nn.Module, model_file: Path, patch_size: list[int], name: str) -> int:
    """An MLflow PyTorch model (signature, input example) with ``model.pt`` inside, registered as a new version of
    ``name`` tagged with the file's digest; returns the version."""
    example, output = _input_example(network, patch_size)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            network,
            name=MODEL_NAME,
            signature=mlflow.models.infer_signature(example, output),
            input_example=example,
            extra_files=[str(model_file)],
            pip_requirements=[f"torch=={torch.__version__}", f"monai=={version('monai')}"],
        )
    registered = mlflow.register_model(info.model_uri, name, tags={MODEL_DIGEST: file_digest(model_file)})
    return int(registered.version)


def _registered(client: MlflowClient, name: str, run_id: str, digest: str) -> list[int]:
    """The versions of ``name`` that hold this run's model file, oldest first."""
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return sorted(int(v.version) for v in found if v.tags.get(MODEL_DIGEST) == digest)


def _version_for(run: RunLog, network: torch.nn.Module, model_file: Path, patch_size: list[int], name: str) -> int:
    """The version of this run's model file, registered at its first evaluation only. Should two evaluations register
    it at once, each keeps the older version and the newer one is deleted."""
    digest = file_digest(model_file)
    found = _registered(run.client, name, run.run_id, digest)
    if not found:
        created = _log_model(run.run_id, network, model_file, patch_size, name)
        found = _registered(run.client, name, run.run_id, digest)
        if created != found[0]:
            run.client.delete_model_version(name, str(created))
    return found[0]


def _versions(client: MlflowClient, name: str) -> list[Version]:
    """Every version with its latest evaluation's score and comparison key (None before its first)."""
    found = []
    for registered in client.search_model_versions(f"name='{name}'"):
        tags = registered.tags
        score = float(tags[SCORE]) if SCORE in tags else None
        parts = {k[len(KEY_PREFIX) :]: v for k, v in tags.items() if k.startswith(KEY_PREFIX)}
        placed = frozenset(a for a in (CHAMPION, CHALLENGER) if PLACED.format(a) in tags)
        found.append(Version(int(registered.version), score, tags.get(KEY), parts, placed))
    return sorted(found, key=lambda v: v.number)


def _state(client: MlflowClient, name: str) -> tuple[dict[str, int], dict[str, Move], list[Version]]:
    """Where the aliases are, the moves people made (with ``medseg runs alias``, recorded; outside medseg, found
    here and recorded from now on, so that it holds as a person's choice), and the versions. The aliases are read
    before the versions: medseg marks a version before it moves an alias there, so the mark is seen."""
    model = client.get_registered_model(name)
    holders = {alias: int(number) for alias, number in model.aliases.items() if alias in (CHAMPION, CHALLENGER)}
    moves = {
        a: Move(**json.loads(model.tags[MOVED.format(a)]))
        for a in (CHAMPION, CHALLENGER)
        if MOVED.format(a) in model.tags
    }
    versions = _versions(client, name)
    for alias, number in holders.items():
        if _moved_outside(alias, number, versions, moves.get(alias)):
            note = "found at the next evaluation: not moved with `medseg runs alias`"
            moves[alias] = Move(number, max(v.number for v in versions), OUTSIDE, _now(), note)
            log.warning("%s@%s was moved to version %d outside medseg; kept as a person's choice", name, alias, number)
            _concurrently(client.set_registered_model_tag, name, MOVED.format(alias), json.dumps(asdict(moves[alias])))
    return holders, moves, versions


def _moved_outside(alias: str, number: int, versions: list[Version], move: Move | None) -> bool:
    """medseg marks a version before moving an alias to it; a registry from before the marks is not judged."""
    if move is not None and move.version == number or not any(alias in v.placed for v in versions):
        return False
    return not any(v.number == number and alias in v.placed for v in versions)


def _place(client: MlflowClient, name: str, alias: str, number: int) -> None:
    _concurrently(client.set_model_version_tag, name, str(number), PLACED.format(alias), _now())
    _concurrently(client.set_registered_model_alias, name, alias, str(number))


def _settle(client: MlflowClient, name: str) -> tuple[dict[str, int], list[Version], dict[str, Move]]:
    """Move the aliases to their target until a fresh look finds them there, then say why each stands there. MLflow
    has no compare-and-set, but since every evaluation aims at the same target and checks after its own last move,
    the last one to move an alias corrects whatever an evaluation with an older view wrote before it."""
    for _ in range(10):
        holders, moves, versions = _state(client, name)
        target = targets(versions, holders.get(CHAMPION), moves)
        if all(holders.get(alias) == number for alias, number in target.items()):
            break
        for alias, number in target.items():
            _place(client, name, alias, number)
        time.sleep(random.uniform(0.1, 0.3))
    else:
        log.warning("%s: the aliases kept moving under concurrent evaluations; look at them in the registry", name)
    for alias, number in target.items():
        if not any(v.number == number and alias in v.placed for v in versions):  # where it stands, marked as medseg's
            _concurrently(client.set_model_version_tag, name, str(number), PLACED.format(alias), _now())
        _concurrently(
            client.set_registered_model_tag, name, WHY.format(alias), reason_for(number, target, versions, moves)[1]
        )
    return target, versions, moves


def _concurrently(write, *args) -> None:
    """A write that another evaluation may make at the same moment: a store that refuses the second insert of the same
    alias or tag (PostgreSQL's unique key) has taken the other's, and the next look at the registry decides."""
    try:
        write(*args)
    except MlflowException as err:
        log.info("registry write refused, another evaluation made it at the same time: %s", describe_error(err)[:300])


def _evaluated(client: MlflowClient, name: str, number: int, score: float, key: dict[str, str]) -> None:
    """The version stands on its latest evaluation: its score and comparison key as tags, before the aliases move."""
    tags = {SCORE: score, KEY: key_digest(key), **{KEY_PREFIX + k: v for k, v in key.items()}}
    for tag, value in tags.items():
        client.set_model_version_tag(name, str(number), tag, str(value))


def register(
    run: RunLog,
    network: torch.nn.Module,
    model_file: Path,
    patch_size: list[int],
    name: str,
    score: float,
    key: dict[str, str],
    evaluated_at: int | None = None,
) -> Decision | None:
    """Record an evaluation of the run's model under ``name``: the version of this run and model file (registered at
    its first evaluation) gets the score and comparison ``key`` and an ``evaluation.<ms>`` record, then the aliases
    settle. ``evaluated_at`` (ms) names the record, so that a deferred registration replayed twice writes it once.
    A model with a NaN or infinite weight is refused (ModelError) before anything is registered."""
    evaluated_at = evaluated_at or int(time.time() * 1000)
    check_finite(network.state_dict(), model_file)
    if not run.online:
        log.warning("%s not registered yet: the tracking server did not answer; `medseg runs sync` will", name)
        run.set_tags({"registry.decision": "deferred: the tracking server did not answer; registered by sync"})
        later = {"name": name, "score": score, "key": key, "patch_size": patch_size, "experiment": run.experiment}
        run.defer({"op": REGISTER_OP, **later, "evaluated_at": evaluated_at}, model_file)
        return None
    number = _version_for(run, network, model_file, patch_size, name)
    _evaluated(run.client, name, number, score, key)
    target, versions, moves = _settle(run.client, name)
    alias, reason, champion_score = reason_for(number, target, versions, moves)
    record = {"score": score, "key": key, "run": run.run_id, "alias": alias, "reason": reason}
    run.client.set_model_version_tag(name, str(number), f"{EVALUATION_PREFIX}{evaluated_at}", json.dumps(record))
    decision = Decision(name, str(number), alias, reason, score, champion_score)
    run.set_tags({f"registry.{k}": v for k, v in asdict(decision).items() if k not in ("score", "champion_score")})
    run.log_metrics(
        {"registry.score": score, **({"registry.champion_score": champion_score} if champion_score is not None else {})}
    )
    log.info("%s version %s evaluated, now %s: %s", name, number, alias, reason)
    return decision


def move_alias(name: str, alias: str, number: int, note: str = "") -> str:
    """A person's choice: ``alias`` goes to version ``number`` and stays there, recorded with who and when, until a
    person moves it again or a later version scores better on its comparison key; returns why it stands there."""
    client = MlflowClient(configure())
    versions = _versions(client, name)
    if alias not in (CHAMPION, CHALLENGER) or not any(v.number == number and v.score is not None for v in versions):
        raise MedsegError(f"{name}: only {CHAMPION} or {CHALLENGER} can be moved, to an evaluated version")
    newest = max(v.number for v in versions)
    who = os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    move = Move(number, newest, who, _now(), note)
    client.set_registered_model_tag(name, MOVED.format(alias), json.dumps(asdict(move)))
    _place(client, name, alias, number)
    target, versions, moves = _settle(client, name)
    return reason_for(target[alias], target, versions, moves)[1]
