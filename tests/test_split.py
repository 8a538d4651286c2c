import json

import pandas as pd
import pytest

from pipeline.config import SplitConfig
from pipeline.errors import MedsegError
from pipeline.split import assign_folds, split

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
