"""The planner's choices on the fingerprints of real datasets (tests/fixtures/fingerprints) and on
synthetic ones that exercise each rule."""

import json

import numpy as np
import pytest
import torch

from pipeline.config import Params, TrainConfig
from pipeline.networks import plan as network_plan
from pipeline.networks.model import build_network, network_spec
from tests.conftest import FIXTURES


def _fingerprints(name):
    return list(json.loads((FIXTURES / "fingerprints" / f"{name}.json").read_text()).values())


def _plan(fingerprints, dimensions=3):
    spacing, _ = network_plan.target_spacing([f["spacing"] for f in fingerprints], [f["shape"] for f in fingerprints])
    return spacing, network_plan.plan_experiment(fingerprints, spacing, dimensions)


def test_hippocampus_is_planned_as_the_hand_tuned_recipe_was():
    spacing, plan = _plan(_fingerprints("hippocampus"))
    assert spacing == [1.0, 1.0, 1.0] and plan["configuration"] == "3d"
    chosen = plan["configurations"]["3d"]
    assert chosen["patch_size"] == [40, 56, 40]  # nnU-Net plans the same patch for this task
    assert chosen["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 3
    assert chosen["channels"] == [16, 32, 64, 128] and chosen["batch_size"] == 4
    assert chosen["network"] == "unet" and not chosen["in_plane_augmentation"]


def test_lung_nodules_are_planned_as_nnunet_plans_them_not_as_hippocampus():
    spacing, plan = _plan(_fingerprints("lung_nodules"))
    assert spacing == pytest.approx([0.703125, 0.703125, 1.25])
    assert plan["configuration"] == "3d"
    chosen = plan["configurations"]["3d"]
    # nnU-Net v2's 3d_fullres: 7x48x48 (z, y, x), no pooling along z, 4 stages
    assert chosen["patch_size"] == [48, 48, 7]
    assert chosen["strides"] == [[1, 1, 1]] + [[2, 2, 1]] * 3
    assert len(chosen["channels"]) == 4
    assert chosen["batch_size"] == 24, "small patches, large batches (nnU-Net's GPU budget gives 29)"
    assert chosen["in_plane_augmentation"], "a 7-slice patch is rotated in-plane only"
    assert plan["configurations"]["2d"]["patch_size"] == [48, 48]
    assert plan["configurations"]["2d"]["batch_size"] > 100
    for key in ("patch_size", "strides", "batch_size", "network"):
        assert chosen["reasons"][key]


def test_isbi_slices_are_planned_in_2d_whole():
    spacing, plan = _plan(_fingerprints("isbi2012"), dimensions=2)
    assert plan["configuration"] == "2d" and list(plan["configurations"]) == ["2d"]
    chosen = plan["configurations"]["2d"]
    assert chosen["patch_size"] == [512, 512] and len(chosen["strides"]) == 8, "pooled down to 4x4"
    assert chosen["batch_size"] == network_plan.MIN_BATCH


def test_a_much_coarser_and_shorter_axis_keeps_a_coarse_target_spacing():
    spacings = [[0.7, 0.7, 5.0]] * 8 + [[0.8, 0.8, 3.0]] * 2
    shapes = [[512, 512, 40]] * 10
    spacing, reason = network_plan.target_spacing(spacings, shapes)
    assert spacing[:2] == [0.7, 0.7] and spacing[2] == pytest.approx(3.0)
    assert "10th percentile" in reason
    isotropic, reason = network_plan.target_spacing([[1, 1, 1.2]] * 3, [[50, 50, 50]] * 3)
    assert isotropic == [1, 1, 1.2] and "median" in reason


def test_anisotropic_data_get_in_plane_kernels_first_and_a_dynunet():
    plan = network_plan.patch_and_topology([300, 300, 60], [0.7, 0.7, 5.0])
    assert plan["kernels"][0] == [3, 3, 1], "no convolution across 5 mm slices at full resolution"
    assert plan["kernels"][-1] == [3, 3, 3]
    assert plan["strides"][1] == [2, 2, 1]
    assert np.prod(plan["patch_size"]) <= network_plan.MAX_PATCH_VOXELS
    assert all(p % d == 0 for p, d in zip(plan["patch_size"], network_plan.divisors(plan["strides"])))
    configuration = network_plan.configuration([300, 300, 60], [0.7, 0.7, 5.0], 1e9)
    assert configuration["network"] == "dynunet"
    spec = network_spec(Params(), 2, 3, configuration)
    network = build_network(spec)
    assert network(torch.zeros(1, 1, *configuration["patch_size"])).shape[2:] == tuple(configuration["patch_size"])


def test_large_cases_are_cut_to_the_voxel_budget_along_the_axis_they_overcover():
    plan = network_plan.patch_and_topology([400, 400, 300], [0.8, 0.8, 0.8])
    assert np.prod(plan["patch_size"]) <= network_plan.MAX_PATCH_VOXELS
    assert all(p % 16 == 0 for p in plan["patch_size"])


def test_the_batch_is_capped_at_a_share_of_the_dataset():
    batch, reason = network_plan.batch_size([16, 16, 16], dataset_voxels=20 * 16**3)
    assert batch == network_plan.MIN_BATCH and "dataset" in reason


def test_params_override_each_choice_and_the_topology_follows_the_patch():
    planned = network_plan.configuration([43, 43, 7.1], [0.7, 0.7, 1.25], 1e8)
    config = TrainConfig(patch_size=[64, 64, 16], batch_size=3, network="dynunet")
    resolved = network_plan.resolve(planned, config, [0.7, 0.7, 1.25])
    assert resolved["patch_size"] == [64, 64, 16] and resolved["batch_size"] == 3
    assert resolved["network"] == "dynunet" and resolved["reasons"]["batch_size"] == "params"
    assert resolved["strides"][1] == [2, 2, 2], "16 slices can be pooled"
    cut = network_plan.resolve(planned, TrainConfig(channels=[8, 16]), [0.7, 0.7, 1.25])
    assert cut["channels"] == [8, 16] and len(cut["strides"]) == len(cut["kernels"]) == 2
