"""Stage 3: a seeded k-fold assignment of cases; one fold is held out for validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import SplitConfig
from pipeline.errors import ConfigError, DatasetError
from pipeline.files import write_json


def assign_folds(case_ids: list[str], n_folds: int, seed: int) -> dict[str, int]:
    """Same ids and seed give the same folds, whatever order the ids come in."""
    ordered = sorted(case_ids)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[i]: rank % n_folds for rank, i in enumerate(permutation)}


def split(manifest_csv: Path, out_json: Path, config: SplitConfig, seed: int) -> dict:
    case_ids = pd.read_csv(manifest_csv)["case_id"].astype(str).tolist()
    if config.fold >= config.n_folds:
        raise ConfigError(
            f"split.fold is {config.fold} but there are only {config.n_folds} folds (0..{config.n_folds - 1})"
        )
    if len(case_ids) < config.n_folds:
        raise DatasetError(
            f"{manifest_csv}: {len(case_ids)} cases cannot fill {config.n_folds} folds; lower split.n_folds"
        )
    folds = assign_folds(case_ids, config.n_folds, seed)
    result = {
        "seed": seed,
        "n_folds": config.n_folds,
        "fold": config.fold,
        "train": sorted(c for c, f in folds.items() if f != config.fold),
        "validation": sorted(c for c, f in folds.items() if f == config.fold),
        "folds": folds,
    }
    write_json(out_json, result)
    return result
