"""What made a run: the git commit, DVC's hash of the raw data, the validation split, and the files to keep."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import yaml

RAW_DATA = "data/raw"
SPLIT_TAG = "split.validation_sha256"


def git_commit(cwd: Path | None = None) -> tuple[str | None, bool]:
    """HEAD's commit and whether the working tree differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=cwd
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            cwd=cwd,
        )
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return commit, bool(status.stdout.strip())


def dvc_output_hash(output: str = RAW_DATA, lock_file: Path = Path("dvc.lock")) -> str | None:
    """The hash DVC recorded for a stage output, read from ``dvc.lock``."""
    if not lock_file.is_file():
        return None
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") == output:
                return out.get("md5") or out.get("hash")
    return None


def validation_split_hash(split_json: Path) -> str:
    """The same validation cases give the same hash, whatever their order: runs are ranked only on equal terms."""
    cases = sorted(json.loads(Path(split_json).read_text())["validation"])
    return hashlib.sha256(json.dumps(cases).encode()).hexdigest()


def _digest(content) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def comparison_key(split_json: Path, plan: dict, postprocess: dict, tta: bool) -> dict[str, str]:
    """What an evaluation's score depends on besides the weights: the validation cases, the raw data (DVC's hash in
    ``dvc.lock``), the preprocessing ``plan`` and the ``postprocess``-ing the model carries (``{}`` for none), and
    test-time augmentation. Two scores are comparable only where all of these agree."""
    return key_parts(validation_split_hash(split_json), dvc_output_hash() or "unknown", plan, postprocess, tta)


def key_parts(split: str, data: str, plan: dict, postprocess: dict, tta: bool | str) -> dict[str, str]:
    """The comparison key from its parts: the split's and data's hashes as they are, the plan and post-processing
    digested; ``tta`` a bool, or a string where it is not known (an evaluation recorded before the key was)."""
    tta = str(tta).lower() if isinstance(tta, bool) else tta
    return {"split": split, "data": data, "plan": _digest(plan), "tta": tta, "postprocess": _digest(postprocess)}


def key_digest(key: dict[str, str]) -> str:
    """One short name for a comparison key, to tell at a glance whether two scores compare."""
    return _digest(key)[:12]


def provenance_tags(split_json: Path | None = None) -> dict[str, str]:
    commit, dirty = git_commit()
    tags = {"git.dirty": str(dirty).lower()}
    if commit:
        tags["mlflow.source.git.commit"] = commit
    data_hash = dvc_output_hash()
    if data_hash:
        tags["dvc.raw_data_md5"] = data_hash
    if split_json is not None:
        tags[SPLIT_TAG] = validation_split_hash(split_json)
    return tags


def lineage_files(split_json: Path) -> list[Path]:
    """The files that say how a run was made, where present: the split, ``dvc.lock`` (as of the stages before)."""
    return [path for path in (Path(split_json), Path("dvc.lock")) if path.is_file()]
