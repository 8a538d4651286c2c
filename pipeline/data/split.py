"""Stage 3: a seeded k-fold assignment of cases; one fold is held out for validation.

With ``split.group`` or ``split.group_table`` the folds are group-disjoint: every case of a group (a patient, say)
lands in the same fold, so no patient is both trained and validated on."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import SplitConfig
from pipeline.errors import ConfigError, DatasetError
from pipeline.files import write_json

log = logging.getLogger(__name__)


def _named(case_ids: list[str], most: int = 5) -> str:
    shown = ", ".join(f"'{c}'" for c in case_ids[:most])
    return shown + (f" and {len(case_ids) - most} more" if len(case_ids) > most else "")


def _groups_by_pattern(case_ids: list[str], pattern: str) -> dict[str, str]:
    regex = re.compile(pattern)
    groups, unmatched = {}, []
    for case_id in case_ids:
        found = regex.search(case_id)
        key = None if found is None else found.group(1) if regex.groups else found.group(0)
        if key is None:  # no match, or an optional first group that took no part in it
            unmatched.append(case_id)
        else:
            groups[case_id] = key
    if unmatched:
        raise ConfigError(
            f"split.group '{pattern}' does not match case id {_named(sorted(unmatched))}; "
            "every case needs a group: change split.group"
        )
    return groups


def _groups_from_table(case_ids: list[str], setting: str) -> dict[str, str]:
    path, _, column = setting.rpartition(":")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ConfigError(f"split.group_table '{setting}': no such file {path}") from None
    for needed in ("case_id", column):
        if needed not in table.columns:
            raise ConfigError(f"split.group_table '{setting}': {path} has no column '{needed}'")
    table = table[table["case_id"].isin(case_ids)]
    clashing = sorted(table.groupby("case_id")[column].nunique().loc[lambda n: n > 1].index)
    if clashing:
        raise ConfigError(f"split.group_table '{setting}': case id {_named(clashing)} has more than one group")
    groups = {case_id: group for case_id, group in zip(table["case_id"], table[column]) if group.strip()}
    missing = sorted(set(case_ids) - set(groups))
    if missing:
        raise ConfigError(
            f"split.group_table '{setting}': case id {_named(missing)} has no group in {path} "
            f"(no row, or an empty {column})"
        )
    return groups


def case_groups(case_ids: list[str], config: SplitConfig) -> dict[str, str] | None:
    """Each case's group as ``split.group`` or ``split.group_table`` says (a table path is relative to the working
    directory, as params.yaml's are); None without either."""
    if config.group is not None:
        return _groups_by_pattern(case_ids, config.group)
    if config.group_table is not None:
        return _groups_from_table(case_ids, config.group_table)
    return None


def assign_folds(case_ids: list[str], n_folds: int, seed: int, groups: dict[str, str] | None = None) -> dict[str, int]:
    """Same ids, seed and groups give the same folds, whatever order the ids come in.

    Without groups, cases are dealt round-robin in a seeded order. With ``groups`` (case id -> group), every case
    of a group gets the same fold: groups are shuffled with the seed, then taken largest first (ties in the seeded
    order), each into the fold that holds the fewest cases so far (the lowest such fold on a tie)."""
    ordered = sorted(case_ids)
    if groups is None:
        permutation = np.random.default_rng(seed).permutation(len(ordered))
        return {ordered[i]: rank % n_folds for rank, i in enumerate(permutation)}
    ungrouped = [c for c in ordered if c not in groups]
    if ungrouped:
        raise DatasetError(f"case id {_named(ungrouped)} has no group")
    members: dict[str, list[str]] = {}
    for case_id in ordered:
        members.setdefault(groups[case_id], []).append(case_id)
    if len(members) < n_folds:
        raise DatasetError(
            f"{len(members)} groups of cases cannot fill {n_folds} folds: each group goes to one fold whole; "
            "lower split.n_folds or group more finely"
        )
    names = sorted(members)
    shuffled = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    shuffled.sort(key=lambda name: -len(members[name]))  # stable: ties keep the seeded order
    sizes = [0] * n_folds
    folds = {}
    for name in shuffled:
        fold = sizes.index(min(sizes))
        sizes[fold] += len(members[name])
        folds.update(dict.fromkeys(members[name], fold))
    return folds


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
    groups = case_groups(case_ids, config)
    folds = assign_folds(case_ids, config.n_folds, seed, groups)
    result = {"seed": seed, "n_folds": config.n_folds, "fold": config.fold}
    cases_per_fold = Counter(folds.values())
    if groups is None:  # split.json stays as it was before grouping existed
        for fold in range(config.n_folds):
            log.info("fold %d: %d cases (ungrouped: each case its own group)", fold, cases_per_fold[fold])
    else:
        key = "group" if config.group is not None else "group_table"
        setting, n_groups = f"split.{key}", len(set(groups.values()))
        result["grouping"] = {setting: getattr(config, key), "n_groups": n_groups}
        groups_per_fold = Counter(fold for fold, _ in {(folds[c], groups[c]) for c in folds})
        log.info("%d cases in %d groups (%s)", len(folds), n_groups, setting)
        for fold in range(config.n_folds):
            log.info("fold %d: %d groups, %d cases", fold, groups_per_fold[fold], cases_per_fold[fold])
    result.update(
        train=sorted(c for c, f in folds.items() if f != config.fold),
        validation=sorted(c for c, f in folds.items() if f == config.fold),
        folds=folds,
    )
    write_json(out_json, result)
    return result
