import json
import logging
import random
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import Params, SplitConfig
from pipeline.data.split import assign_folds, case_groups, split
from pipeline.data.volumes import strip_suffix
from pipeline.errors import ConfigError, MedsegError
from tests.conftest import SHARED

CASES = [f"case_{i:03d}" for i in range(23)]


def test_folds_are_balanced_and_cover_every_case():
    folds = assign_folds(CASES, n_folds=5, seed=1)
    assert set(folds) == set(CASES)
    sizes = pd.Series(folds).value_counts()
    assert sizes.max() - sizes.min() <= 1


def test_the_same_seed_gives_the_same_folds_in_any_order():
    assert assign_folds(CASES, 5, seed=7) == assign_folds(list(reversed(CASES)), 5, seed=7)
    assert assign_folds(CASES, 5, seed=7) != assign_folds(CASES, 5, seed=8)


def test_split_file_holds_disjoint_train_and_validation(tmp_path):
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"case_id": CASES}).to_csv(manifest, index=False)
    result = split(manifest, tmp_path / "split.json", SplitConfig(n_folds=5, fold=2), seed=3)
    assert json.loads((tmp_path / "split.json").read_text()) == result
    assert set(result["train"]).isdisjoint(result["validation"])
    assert sorted(result["train"] + result["validation"]) == CASES
    assert all(result["folds"][c] == 2 for c in result["validation"])


def test_impossible_splits_say_what_to_change(tmp_path):
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"case_id": CASES[:3]}).to_csv(manifest, index=False)
    with pytest.raises(MedsegError, match="lower split.n_folds"):
        split(manifest, tmp_path / "s.json", SplitConfig(n_folds=5), seed=0)
    with pytest.raises(MedsegError, match="split.fold is 4 but there are only 2 folds"):
        split(manifest, tmp_path / "s.json", SplitConfig(n_folds=2, fold=4), seed=0)


# assign_folds' output before grouping existed; runs made since depend on it staying so
BEFORE_GROUPING = {
    (5, 1): [1, 0, 4, 2, 3, 4, 1, 4, 0, 2, 1, 0, 1, 0, 3, 2, 3, 3, 4, 2, 0, 2, 1],
    (4, 2026): [1, 1, 3, 1, 1, 2, 2, 0, 0, 3, 2, 0, 3, 0, 2, 2, 1, 0, 3, 0, 1, 2, 3],
}


@pytest.mark.parametrize(("n_folds", "seed"), sorted(BEFORE_GROUPING))
def test_without_groups_the_folds_are_what_they_were(n_folds, seed, tmp_path):
    folds = assign_folds(CASES, n_folds, seed)
    assert [folds[c] for c in CASES] == BEFORE_GROUPING[n_folds, seed]
    assert assign_folds(CASES, n_folds, seed, groups=None) == folds
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"case_id": CASES}).to_csv(manifest, index=False)
    result = split(manifest, tmp_path / "split.json", SplitConfig(n_folds=n_folds), seed=seed)
    assert list(result) == ["seed", "n_folds", "fold", "train", "validation", "folds"], "split.json as it was"


def patients(n_patients: int, seed: int = 0) -> list[str]:
    """1 to 6 cases per patient, named as the LIDC nodule cases are."""
    sizes = random.Random(seed).choices([1, 1, 1, 2, 2, 3, 4, 6], k=n_patients)
    return [f"PAT-{p:04d}_R_{k}" for p in range(n_patients) for k in range(1, sizes[p] + 1)]


def patient_of(case_id: str) -> str:
    return case_id.split("_")[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_folds_keep_each_group_in_one_fold_and_stay_balanced(seed):
    cases = patients(60, seed)
    groups = {c: patient_of(c) for c in cases}
    folds = assign_folds(cases, 5, seed, groups)
    assert set(folds) == set(cases)
    by_patient = pd.DataFrame({"patient": [groups[c] for c in folds], "fold": list(folds.values())})
    assert by_patient.groupby("patient")["fold"].nunique().max() == 1
    sizes = pd.Series(folds).value_counts()
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 6  # at most the largest group apart


def test_grouped_folds_depend_on_ids_seed_and_groups_only():
    cases = patients(40)
    groups = {c: patient_of(c) for c in cases}
    shuffled = random.Random(3).sample(cases, len(cases))
    assert assign_folds(cases, 4, 7, groups) == assign_folds(shuffled, 4, 7, dict(reversed(groups.items())))
    assert assign_folds(cases, 4, 7, groups) != assign_folds(cases, 4, 8, groups)


def test_groups_go_largest_first_to_the_fold_with_fewest_cases():
    groups = {"a1": "a", "a2": "a", "a3": "a", "b1": "b", "b2": "b", "c1": "c", "d1": "d"}
    folds = assign_folds(list(groups), 2, 0, groups)
    assert folds["a1"] == folds["a2"] == folds["a3"] != folds["b1"] == folds["b2"]
    assert sorted(pd.Series(folds).value_counts()) == [3, 4]


def test_fewer_groups_than_folds_is_an_error_saying_so():
    cases = [f"P{p}_{k}" for p in range(3) for k in range(4)]
    with pytest.raises(MedsegError, match="3 groups of cases cannot fill 5 folds"):
        assign_folds(cases, 5, 0, {c: c[:2] for c in cases})


def test_the_group_pattern_takes_its_first_capture_group_else_the_whole_match():
    cases = ["LIDC-IDRI-0005_R_1", "LIDC-IDRI-0005_R_2", "LIDC-IDRI-0012_R_1"]
    captured = case_groups(cases, SplitConfig(group=r"^(LIDC-IDRI-\d+)_"))
    assert captured == {c: c[:14] for c in cases} and set(captured.values()) == {"LIDC-IDRI-0005", "LIDC-IDRI-0012"}
    assert case_groups(cases, SplitConfig(group=r"\d{4}")) == {c: c[10:14] for c in cases}
    assert case_groups(cases, SplitConfig()) is None


def test_a_case_the_pattern_does_not_match_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"split.group '\^\(P\\d\+\)_' does not match case id 'odd_one'"):
        case_groups(["P1_a", "odd_one", "P2_b"], SplitConfig(group=r"^(P\d+)_"))


def test_a_group_table_names_each_cases_group(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = patients(12)
    pd.DataFrame({"case_id": cases[::-1], "subject": [f"S{patient_of(c)}" for c in cases[::-1]], "x": 1}).to_csv(
        "meta.csv", index=False
    )
    groups = case_groups(cases, SplitConfig(group_table="meta.csv:subject"))
    assert groups == {c: f"S{patient_of(c)}" for c in cases}


def test_a_case_missing_from_the_group_table_is_an_error_naming_it(tmp_path):
    table = tmp_path / "meta.csv"
    pd.DataFrame({"case_id": ["a", "b"], "patient": ["p1", ""]}).to_csv(table, index=False)
    setting = f"{table}:patient"
    with pytest.raises(ConfigError, match=r"split.group_table '.*meta.csv:patient': case id 'b', 'c' has no group"):
        case_groups(["a", "b", "c"], SplitConfig(group_table=setting))
    with pytest.raises(ConfigError, match="has no column 'subject'"):
        case_groups(["a"], SplitConfig(group_table=f"{table}:subject"))
    with pytest.raises(ConfigError, match="no such file"):
        case_groups(["a"], SplitConfig(group_table=f"{tmp_path / 'absent.csv'}:patient"))


def test_group_and_group_table_together_or_malformed_are_config_errors():
    with pytest.raises(ValueError, match="set split.group or split.group_table, not both"):
        SplitConfig(group="^(P\\d+)", group_table="t.csv:patient")
    with pytest.raises(ValueError, match="not a regular expression"):
        SplitConfig(group="(unclosed")
    with pytest.raises(ValueError, match="expected PATH.csv:COLUMN"):
        SplitConfig(group_table="t.csv")


def test_split_file_records_the_grouping_and_the_log_each_folds_groups_and_cases(tmp_path, caplog):
    cases = patients(30)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"case_id": cases}).to_csv(manifest, index=False)
    config = SplitConfig(n_folds=3, fold=1, group=r"^(PAT-\d+)_")
    with caplog.at_level(logging.INFO, logger="pipeline.data.split"):
        result = split(manifest, tmp_path / "split.json", config, seed=5)
    assert json.loads((tmp_path / "split.json").read_text()) == result
    assert result["grouping"] == {"split.group": r"^(PAT-\d+)_", "n_groups": 30}
    validation_patients = {patient_of(c) for c in result["validation"]}
    assert validation_patients.isdisjoint(patient_of(c) for c in result["train"])
    sizes = pd.Series(result["folds"]).value_counts()
    for fold in range(3):
        assert f"fold {fold}: " in caplog.text and f" groups, {sizes[fold]} cases" in caplog.text
    assert "in 30 groups (split.group)" in caplog.text


def test_params_yaml_reads_the_grouping_settings():
    params = Params.model_validate({"split": {"group": r"^(LIDC-IDRI-\d+)_"}})
    assert params.split.group == r"^(LIDC-IDRI-\d+)_" and params.split.group_table is None


LUNG_NODULES = SHARED / "lung-nodules"


@pytest.mark.skipif(not (LUNG_NODULES / "dataset.json").is_file(), reason="../shared/datasets/lung-nodules is absent")
def test_real_lung_nodule_cases_split_by_patient():
    entries = json.loads((LUNG_NODULES / "dataset.json").read_text())["training"]
    cases = [strip_suffix(Path(entry["image"])) for entry in entries]
    assert len(cases) == 712
    groups = case_groups(cases, SplitConfig(group=r"^(LIDC-IDRI-\d+)_"))
    assert len(set(groups.values())) == 401
    folds = assign_folds(cases, 5, 42, groups)
    by_patient = pd.DataFrame({"patient": [groups[c] for c in folds], "fold": list(folds.values())})
    assert by_patient.groupby("patient")["fold"].nunique().max() == 1, "no patient in two folds"
    sizes = pd.Series(folds).value_counts()
    assert len(sizes) == 5 and all(abs(size - 712 / 5) <= 10 for size in sizes), sizes.to_dict()
