"""The experiment plan: target spacing, network topology, patch and batch derived from the dataset
fingerprint, as nnU-Net's experiment planner derives them, each choice with its reason.

The rules (nnU-Net v2's, restated): a much coarser axis is not resampled to the fine spacing; an
axis is pooled only while its feature map stays at least ``MIN_FEATURE_MAP`` voxels and its
spacing is within twice the finest; a convolution spans an axis (kernel 3) once that axis is within
twice the finest spacing; the patch covers the median case within a voxel budget, shrinking the
axis it over-covers most; the batch fills a budget of voxels per step (small patches, large
batches), capped at a twentieth of the dataset. Every choice can be overridden by params.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.config import TrainConfig

ANISOTROPY = 3.0  # an axis this much coarser than the others (in spacing and in voxels) is anisotropic
MIN_FEATURE_MAP = 4  # voxels along an axis at the lowest resolution
MAX_PATCH_VOXELS = 96**3
BATCH_VOXELS = 400_000  # voxels per training step: about 0.08 s of a bfloat16 step on 2 CPU cores
MIN_BATCH, DATASET_SHARE = 2, 0.05
BASE_FEATURES, MAX_FEATURES = 16, 256
THIN = MIN_FEATURE_MAP  # a median case with fewer slices than this is planned in 2D


def target_spacing(spacings: list[list[float]], shapes: list[list[int]]) -> tuple[list[float], str]:
    """The median spacing, except along an axis much coarser in spacing and much shorter in voxels,
    which gets the tenth percentile of its spacings (never finer than the other axes)."""
    spacings_array = np.asarray(spacings, dtype=float)
    target = np.median(spacings_array, axis=0)
    sizes = np.median(np.asarray(shapes) * spacings_array / target, axis=0)
    coarse = int(np.argmax(target))
    others = [axis for axis in range(len(target)) if axis != coarse]
    if len(target) < 3 or not others:
        return target.tolist(), "the median spacing of the cases"
    anisotropic_spacing = target[coarse] > ANISOTROPY * max(target[others])
    anisotropic_voxels = sizes[coarse] * ANISOTROPY < min(sizes[others])
    if not (anisotropic_spacing and anisotropic_voxels):
        return target.tolist(), "the median spacing of the cases (no axis is much coarser and shorter than the others)"
    target[coarse] = max(np.percentile(spacings_array[:, coarse], 10), max(target[others]))
    return target.tolist(), (
        f"the median spacing, but axis {coarse} (over {ANISOTROPY:g}x coarser and shorter than the others) at the "
        f"10th percentile of its spacings, {target[coarse]:.3g} mm, so that it is not interpolated to the fine spacing"
    )


def topology(spacing: list[float], patch: list[int]) -> dict[str, list[list[int]]]:
    """Per-stage strides (the first stage does not downsample) and convolution kernels for a patch."""
    dims = len(spacing)
    current_spacing, size = list(spacing), [float(s) for s in patch]
    strides, kernels, kernel = [[1] * dims], [], [1] * dims
    while True:
        finest = min(current_spacing)
        kernel = [3 if k == 3 or current_spacing[a] / finest < 2 else 1 for a, k in enumerate(kernel)]
        candidates = [a for a in range(dims) if size[a] >= 2 * MIN_FEATURE_MAP]
        if candidates:
            finest_candidate = min(current_spacing[a] for a in candidates)
            candidates = [a for a in candidates if current_spacing[a] / finest_candidate < 2]
        # one axis alone is pooled only while it leaves a feature map of more than the minimum
        if not candidates or (len(candidates) == 1 and size[candidates[0]] < 3 * MIN_FEATURE_MAP):
            break
        kernels.append(list(kernel))
        stride = [2 if a in candidates else 1 for a in range(dims)]
        strides.append(stride)
        current_spacing = [s * f for s, f in zip(current_spacing, stride)]
        size = [math.ceil(s / f) for s, f in zip(size, stride)]
    kernels.append([3] * dims)  # the bottleneck
    return {"strides": strides, "kernels": kernels}


def divisors(strides: list[list[int]]) -> list[int]:
    """What each axis of a patch must be a multiple of, for these strides."""
    return [int(np.prod([stride[axis] for stride in strides])) for axis in range(len(strides[0]))]


def patch_and_topology(median: list[float], spacing: list[float], max_voxels: int = MAX_PATCH_VOXELS) -> dict:
    """The patch covering the median case (in whole multiples of its downsampling) within
    ``max_voxels``; while it is too large, the axis covering most of the median is shortened."""
    patch = [max(1, round(s)) for s in median]
    while True:
        plan = topology(spacing, patch)
        step = divisors(plan["strides"])
        patch = [max(d, math.ceil(p / d) * d) for p, d in zip(patch, step)]
        shrinkable = [a for a in range(len(patch)) if patch[a] > step[a]]
        if np.prod(patch) <= max_voxels or not shrinkable:
            return {"patch_size": patch, **plan}
        axis = max(shrinkable, key=lambda a: patch[a] / median[a])
        patch[axis] -= step[axis]


def batch_size(patch: list[int], dataset_voxels: float, budget: int = BATCH_VOXELS) -> tuple[int, str]:
    voxels = int(np.prod(patch))
    by_budget = max(MIN_BATCH, budget // voxels)
    cap = max(MIN_BATCH, int(DATASET_SHARE * dataset_voxels // voxels))
    if cap < by_budget:
        return cap, f"{DATASET_SHARE:.0%} of the dataset's voxels ({cap} patches of {voxels} voxels)"
    return by_budget, f"{budget} voxels a step ({by_budget} patches of {voxels} voxels)"


def channels(stages: int) -> list[int]:
    return [min(MAX_FEATURES, BASE_FEATURES * 2**stage) for stage in range(stages)]


def configuration(median: list[float], spacing: list[float], dataset_voxels: float) -> dict[str, Any]:
    """One configuration (3D, or 2D when ``median`` and ``spacing`` have two axes), with reasons."""
    planned = patch_and_topology(median, spacing)
    patch, kernels = planned["patch_size"], planned["kernels"]
    batch, batch_reason = batch_size(patch, dataset_voxels)
    uniform = uniform_kernels(kernels)
    thin = _thin(patch)
    return {
        **planned,
        "channels": channels(len(planned["strides"])),
        "batch_size": batch,
        "network": _network(kernels),
        "in_plane_augmentation": thin,
        "reasons": {
            "patch_size": f"covers the median case ({' x '.join(f'{m:.0f}' for m in median)} voxels) in multiples "
            f"of {divisors(planned['strides'])}, within {MAX_PATCH_VOXELS} voxels",
            "strides": f"an axis is pooled while its feature map keeps {MIN_FEATURE_MAP}+ voxels and its spacing "
            "is within twice the finest",
            "kernels": "3 along an axis once its spacing is within twice the finest, else 1",
            "channels": f"{BASE_FEATURES} features doubling per stage, at most {MAX_FEATURES}",
            "batch_size": batch_reason,
            "network": "MONAI UNet (the same kernel at every stage)"
            if uniform
            else "MONAI DynUNet (kernels differ between stages)",
            "in_plane_augmentation": f"rotation in-plane only: the patch is over {ANISOTROPY:g}x thinner along one axis"
            if thin
            else "rotation about every axis",
        },
    }


def plan_experiment(fingerprints: list[dict[str, Any]], spacing: list[float], dimensions: int) -> dict[str, Any]:
    """The 3D and 2D (axial slices: the last axis) configurations of a dataset, and which one to use."""
    sizes = [np.asarray(f["shape"]) * np.asarray(f["spacing"]) / np.asarray(spacing) for f in fingerprints]
    median = np.median(sizes, axis=0).tolist()
    dataset_voxels = float(sum(np.prod(s) for s in sizes))
    if dimensions == 2:
        return {"configurations": {"2d": configuration(median, spacing, dataset_voxels)}, "configuration": "2d"}
    configurations = {
        "3d": configuration(median, spacing, dataset_voxels),
        "2d": configuration(median[:2], spacing[:2], dataset_voxels),
    }
    if median[-1] < THIN:
        return {
            "configurations": configurations,
            "configuration": "2d",
            "configuration_reason": f"the median case has {median[-1]:.1f} slices, fewer than {THIN}",
        }
    return {
        "configurations": configurations,
        "configuration": "3d",
        "configuration_reason": f"the median case has {median[-1]:.1f} slices, enough for a 3D patch",
    }


def uniform_kernels(kernels: list[list[int]]) -> bool:
    """Whether every stage has the same kernel, as MONAI's UNet needs (DynUNet takes one per stage)."""
    return all(k == kernels[0] for k in kernels)


def _network(kernels: list[list[int]]) -> str:
    return "unet" if uniform_kernels(kernels) else "dynunet"


def _thin(patch: list[int]) -> bool:
    return len(patch) == 3 and max(patch) / min(patch) > ANISOTROPY


def _with_patch(planned: dict[str, Any], patch: list[int], spacing: list[float]) -> dict[str, Any]:
    """A configuration whose patch was set by params: its topology planned again for that patch."""
    shape = topology(spacing, patch)
    return {
        **planned,
        "patch_size": list(patch),
        **shape,
        "channels": channels(len(shape["strides"])),
        "network": _network(shape["kernels"]),
        "in_plane_augmentation": _thin(patch),
    }


def _with_levels(planned: dict[str, Any], levels: int) -> dict[str, Any]:
    """The planned topology cut (or extended by isotropic stages) to the number of levels params set."""
    dims = len(planned["patch_size"])
    extra = max(0, levels - len(planned["strides"]))
    return {
        **planned,
        "strides": planned["strides"][:levels] + [[2] * dims] * extra,
        "kernels": planned["kernels"][:levels] + [[3] * dims] * extra,
    }


def resolve(planned: dict[str, Any], config: TrainConfig, spacing: list[float]) -> dict[str, Any]:
    """The planned configuration with every choice that params make instead (their reason: 'params')."""
    resolved, reasons = dict(planned), dict(planned.get("reasons", {}))
    if config.patch_size:
        resolved = _with_patch(resolved, config.patch_size, spacing[: len(config.patch_size)])
        reasons.update(patch_size="params", strides="planned for the patch of params", network="planned for it too")
    if config.channels:
        resolved = {**_with_levels(resolved, len(config.channels)), "channels": list(config.channels)}
        reasons["channels"] = "params"
    if config.batch_size:
        resolved["batch_size"], reasons["batch_size"] = config.batch_size, "params"
    if config.network != "auto":
        resolved["network"], reasons["network"] = config.network, "params"
    return {**resolved, "reasons": reasons}


def for_patch(config: TrainConfig, patch: list[int], spacing: list[float]) -> dict[str, Any]:
    """A configuration from params and a patch alone (no dataset plan): the topology planned for the patch."""
    base = _with_patch({"batch_size": 2, "reasons": {}}, patch, spacing[: len(patch)])
    return resolve(base, config.model_copy(update={"patch_size": None}), spacing)
