"""The U-Net paper's weight map, on label maps small enough to check by hand."""

import numpy as np
import pytest

from pipeline.data.weight_map import boundary_weight_map, class_balance, nearest_two_distances


def _two_cells(gap=2):
    label = np.zeros((20, 30), np.uint8)
    label[5:15, 2:12] = 1
    label[5:15, 12 + gap : 22 + gap] = 1
    return label


def test_class_balance_gives_each_class_the_same_total_weight():
    label = _two_cells()
    weights = class_balance(label)
    assert weights[label == 0].sum() == pytest.approx(weights[label == 1].sum())
    assert weights.sum() == pytest.approx(label.size)


def test_the_gap_between_two_cells_weighs_most():
    label = _two_cells(gap=1)
    weights = boundary_weight_map(label, (1.0, 1.0), w0=10, sigma=5)
    balance = class_balance(label)
    # in the one-pixel gap each cell is one pixel away: d1 + d2 = 2
    assert weights[10, 12] == pytest.approx(balance[10, 12] + 10 * np.exp(-(2**2) / (2 * 5**2)), rel=1e-6)
    assert weights[label == 1] == pytest.approx(balance[label == 1])  # the border term is for the background
    assert weights[10, 12] > weights[0, 0] and weights[10, 12] == weights.max()


def test_a_single_object_gets_class_balance_only():
    label = np.zeros((16, 16), np.uint8)
    label[4:10, 4:10] = 2
    assert boundary_weight_map(label, (1.0, 1.0), w0=10, sigma=5) == pytest.approx(class_balance(label))


def test_distances_use_the_spacing_and_reach_only_cuts_far_objects():
    label = np.zeros((3, 40), np.uint8)
    label[:, 0], label[:, 10], label[:, 39] = 1, 1, 1
    first, second = nearest_two_distances(label, (1.0, 2.0))
    assert first[1, 5] == 10 and second[1, 5] == 10  # five columns of 2 mm from either neighbour
    near_first, near_second = nearest_two_distances(label, (1.0, 2.0), reach=12)
    assert near_first[1, 5] == 10 and near_second[1, 5] == 10
    assert np.isinf(near_second[1, 30])  # the object at column 0 is 60 mm away: beyond reach


def test_a_3d_label_map_gets_3d_distances():
    label = np.zeros((10, 10, 10), np.uint8)
    label[2, 2, 2], label[2, 2, 6] = 1, 2
    weights = boundary_weight_map(label, (1.0, 1.0, 1.0), w0=10, sigma=5)
    assert weights[2, 2, 4] > weights[2, 6, 4] > weights[8, 8, 8]
