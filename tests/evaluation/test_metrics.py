"""Scores against hand-computable cases: a box and real hippocampus labels shifted by one voxel at known
anisotropic spacing, and the empty-case rule."""

import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import binary_erosion

from pipeline.errors import ConfigError
from pipeline.evaluation.metrics import METRICS, case_scores, diagonal_mm, summarise, tolerances
from tests.conftest import HIPPOCAMPUS_FIXTURE, SHARED, needs_shared

SPACING = (0.7, 1.0, 2.5)  # the shift goes along the finest axis, so every surface distance is 0 or 0.7 mm


def _box() -> np.ndarray:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[5:15, 5:15, 5:15] = 1
    return labels


def test_a_box_shifted_by_one_voxel_scores_as_counted_by_hand():
    reference = _box()
    prediction = np.roll(reference, 1, axis=0)
    row = case_scores(prediction, reference, {1: "box"}, SPACING, {1: 1.0})
    # 10x10x10 box: 900 voxels overlap, 100 on each side; 488 surface voxels each, of which 164 moved off the other's
    assert row["dice_box"] == pytest.approx(0.9) and row["iou_box"] == pytest.approx(900 / 1100)
    assert row["sensitivity_box"] == pytest.approx(0.9) and row["precision_box"] == pytest.approx(0.9)
    assert row["hd95_mm_box"] == pytest.approx(0.7)
    assert row["assd_mm_box"] == pytest.approx(0.7 * 164 / 488)
    assert row["nsd_box"] == pytest.approx(1.0)  # every surface point within 1 mm
    tight = case_scores(prediction, reference, {1: "box"}, SPACING, {1: 0.5})
    assert tight["nsd_box"] == pytest.approx((488 - 164) / 488)
    assert row["pixel_error"] == pytest.approx(200 / 8000) and row["absent_box"] == "neither"


def test_distances_follow_the_spacing_not_the_voxel_count():
    reference = _box()
    prediction = np.roll(reference, 1, axis=0)
    coarse = case_scores(prediction, reference, {1: "box"}, (2.0, 3.0, 4.0), {1: 1.0})
    assert coarse["hd95_mm_box"] == pytest.approx(2.0)
    assert coarse["nsd_box"] == pytest.approx((488 - 164) / 488)  # the moved faces are now 2 mm away


def _edges(mask: np.ndarray) -> np.ndarray:
    return mask & ~binary_erosion(mask)


def _expected_for_shift(reference: np.ndarray, value: int, spacing_x: float) -> dict[str, float]:
    """Shifted by one voxel along the finest axis, every surface voxel is 0 or exactly spacing_x from the other's."""
    ref = reference == value
    pred = np.roll(ref, 1, axis=0)
    ref_edges, pred_edges = _edges(ref), _edges(pred)
    moved = (pred_edges & ~ref_edges).sum() + (ref_edges & ~pred_edges).sum()
    total = pred_edges.sum() + ref_edges.sum()
    return {
        "dice": 2 * (ref & pred).sum() / (ref.sum() + pred.sum()),
        "assd_mm": spacing_x * moved / total,
        "nsd_tight": 1 - moved / total,
    }


def _padded_label(path) -> np.ndarray:
    return np.pad(np.asanyarray(nib.load(path).dataobj).astype(np.uint8), 2)


@pytest.mark.parametrize("case", ["hippocampus_001", "hippocampus_252"])
def test_a_real_label_shifted_by_one_voxel_at_anisotropic_spacing(case):
    reference = _padded_label(HIPPOCAMPUS_FIXTURE / "labelsTr" / f"{case}.nii.gz")
    prediction = np.roll(reference, 1, axis=0)
    classes = {1: "Anterior", 2: "Posterior"}
    row = case_scores(prediction, reference, classes, SPACING, {1: 1.0, 2: 0.5})
    for value, name in classes.items():
        expected = _expected_for_shift(reference, value, SPACING[0])
        assert row[f"dice_{name}"] == pytest.approx(expected["dice"], rel=1e-5)
        assert row[f"hd95_mm_{name}"] == pytest.approx(0.7)
        assert row[f"assd_mm_{name}"] == pytest.approx(expected["assd_mm"], rel=1e-5)
    assert row["nsd_Anterior"] == pytest.approx(1.0)  # tolerance 1 mm >= 0.7 mm
    assert row["nsd_Posterior"] == pytest.approx(_expected_for_shift(reference, 2, 0.7)["nsd_tight"], rel=1e-5)


def test_an_eroded_prediction_keeps_precision_and_loses_sensitivity():
    reference = _padded_label(HIPPOCAMPUS_FIXTURE / "labelsTr" / "hippocampus_003.nii.gz")
    prediction = np.where(binary_erosion(reference > 0), reference, 0)
    row = case_scores(prediction, reference, {1: "Anterior", 2: "Posterior"}, (1.0, 1.0, 1.0), {1: 1.0, 2: 1.0})
    for value, name in ((1, "Anterior"), (2, "Posterior")):
        kept, whole = (prediction == value).sum(), (reference == value).sum()
        assert row[f"precision_{name}"] == pytest.approx(1.0)
        assert row[f"sensitivity_{name}"] == pytest.approx(kept / whole, rel=1e-6)
        assert row[f"dice_{name}"] == pytest.approx(2 * kept / (kept + whole), rel=1e-6)


def test_the_empty_case_rule_and_its_counts():
    reference = _box()
    reference[0:3, 0:3, 0:3] = 2
    prediction = reference.copy()
    prediction[prediction == 2] = 0  # class 2 missed
    prediction[17:19, 17:19, 17:19] = 4  # class 4 predicted where the reference has none
    classes = {1: "one", 2: "two", 3: "three", 4: "four"}  # class 3 is in neither
    spacing = (1.0, 2.0, 0.5)
    row = case_scores(prediction, reference, classes, spacing, dict.fromkeys(classes, 1.0))
    diagonal = math.sqrt(20**2 + 40**2 + 10**2)
    assert diagonal_mm(reference.shape, spacing) == pytest.approx(diagonal)
    assert [row[f"absent_{c}"] for c in classes.values()] == ["neither", "prediction", "both", "reference"]
    for metric, (_, higher_is_better) in METRICS.items():
        assert row[f"{metric}_one"] == pytest.approx(1.0 if higher_is_better else 0.0)
        assert row[f"{metric}_three"] == (1.0 if higher_is_better else 0.0)
        for one_sided in ("two", "four"):
            assert row[f"{metric}_{one_sided}"] == (0.0 if higher_is_better else pytest.approx(diagonal))
    summary = summarise(pd.DataFrame([{"case_id": "a", **row}, {"case_id": "b", **row}]), list(classes.values()))
    assert summary["empty_cases"]["two"] == {"both": 0, "reference": 0, "prediction": 2}
    assert summary["empty_cases"]["four"] == {"both": 0, "reference": 2, "prediction": 0}
    assert summary["empty_cases"]["three"] == {"both": 2, "reference": 0, "prediction": 0}
    numbers = [v for v in summary.values() if isinstance(v, float)] + list(summary["std"].values())
    assert numbers and not any(math.isnan(v) for v in numbers)
    assert summary["dice_mean"] == pytest.approx(0.5) and summary["std"]["dice_mean"] == 0.0


def test_summary_keeps_the_quoted_keys_and_adds_median_and_std():
    reference = _box()
    rows = [
        {"case_id": str(shift), **case_scores(np.roll(reference, shift, 0), reference, {1: "box"}, SPACING, {1: 1.0})}
        for shift in (0, 1, 2)
    ]
    summary = summarise(pd.DataFrame(rows), ["box"])
    assert {"n_cases", "dice_mean", "dice_box", "pixel_error"} <= set(summary)
    assert summary["n_cases"] == 3
    assert summary["dice_box"] == pytest.approx((1.0 + 0.9 + 0.8) / 3)
    assert summary["median"]["dice_box"] == pytest.approx(0.9)
    assert summary["std"]["hd95_mm_box"] == pytest.approx(np.std([0.0, 0.7, 1.4]))


def test_tolerances_one_for_all_or_one_per_class():
    classes = {1: "liver", 2: "spine"}
    assert tolerances(2.0, classes) == {1: 2.0, 2: 2.0}
    assert tolerances([1.0, 3.0], classes) == {1: 1.0, 2: 3.0}
    with pytest.raises(ConfigError, match="3 tolerances for 2 classes"):
        tolerances([1.0, 2.0, 3.0], classes)
    with pytest.raises(ConfigError, match="negative"):
        tolerances(-1.0, classes)


@needs_shared
def test_shifted_real_labels_across_the_shared_dataset():
    """Twelve more real cases: the shift's scores match the counts made independently of MONAI."""
    labels = sorted((SHARED / "hippocampus" / "labelsTr").glob("*.nii.gz"))[10:22]
    assert len(labels) == 12
    for path in labels:
        reference = _padded_label(path)
        row = case_scores(np.roll(reference, 1, axis=0), reference, {1: "A", 2: "P"}, SPACING, {1: 0.5, 2: 0.5})
        for value, name in ((1, "A"), (2, "P")):
            expected = _expected_for_shift(reference, value, 0.7)
            assert row[f"hd95_mm_{name}"] == pytest.approx(0.7), path
            assert row[f"assd_mm_{name}"] == pytest.approx(expected["assd_mm"], rel=1e-5), path
            assert row[f"nsd_{name}"] == pytest.approx(expected["nsd_tight"], rel=1e-5), path
