"""Training augmentation of one patch as tensor operations, drawn from an explicit generator.

nnU-Net's spatial transform: one sampling grid per patch composes rotation, scaling, mirroring
and an elastic field, and is evaluated only at the patch's voxels of the whole cached case, so a
rotated patch sees the case's own context instead of padding, and each voxel is interpolated
once. MONAI's chain of RandAffined, Rand3DElasticd and RandFlipd resampled three times and
smoothed a full-size random field for the elastic step (17 ms each time it fired on this
project's 2-core machine), which left the training step waiting for data a quarter of the time.
The intensity steps use MONAI's array transforms with parameters drawn here, so that a patch
depends only on its generator (see ``batches``), never on which thread prepared it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.transforms import AdjustContrast, GaussianSmooth, RandBiasField

from pipeline.config import AugmentationConfig

MAX_ROTATION = math.pi / 12  # radians, each axis
MAX_SCALING = 0.15  # zoom factor 1 +- this, each axis
ELASTIC_CONTROL_SPACING = {2: 20, 3: 8}  # voxels between the control points of the elastic field
ELASTIC_MAGNITUDE = (1.0, 2.0)  # standard deviation of a control point's displacement, in voxels


def fires(probability: float, generator: torch.Generator) -> bool:
    return probability > 0 and torch.rand((), generator=generator).item() < probability


def uniform(low: float, high: float, generator: torch.Generator, size: tuple[int, ...] = ()) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    def plane(angle: torch.Tensor, dims: int, i: int, j: int) -> torch.Tensor:
        matrix = torch.eye(dims)
        cos, sin = torch.cos(angle), torch.sin(angle)
        matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = cos, -sin, sin, cos
        return matrix

    if len(angles) == 1:
        return plane(angles[0], 2, 0, 1)
    return plane(angles[0], 3, 1, 2) @ plane(angles[1], 3, 0, 2) @ plane(angles[2], 3, 0, 1)


def sampling_matrix(
    dims: int, aug: AugmentationConfig, generator: torch.Generator, in_plane: bool = False
) -> torch.Tensor:
    """Maps a patch voxel's offset from the patch centre to the case: rotation (with ``in_plane``, of a 3D
    patch about its last axis only), scaling, mirroring."""
    matrix = torch.eye(dims)
    if fires(aug.affine_prob, generator):
        angles = uniform(-MAX_ROTATION, MAX_ROTATION, generator, (1 if dims == 2 else 3,))
        if in_plane and dims == 3:
            angles[:2] = 0
        matrix = _rotation(angles) @ torch.diag(1 + uniform(-MAX_SCALING, MAX_SCALING, generator, (dims,)))
    for axis in range(dims):
        if fires(aug.flip_prob, generator):
            matrix[:, axis] = -matrix[:, axis]
    return matrix


def elastic_field(patch_size: list[int], generator: torch.Generator) -> torch.Tensor:
    """A smooth displacement (dims x patch, in voxels): random control-point offsets, interpolated."""
    dims = len(patch_size)
    spacing = ELASTIC_CONTROL_SPACING[dims]
    coarse = [math.ceil(size / spacing) + 1 for size in patch_size]
    offsets = torch.randn((1, dims, *coarse), generator=generator) * uniform(*ELASTIC_MAGNITUDE, generator)
    mode = "bicubic" if dims == 2 else "trilinear"
    return F.interpolate(offsets, size=list(patch_size), mode=mode, align_corners=True)[0]


def sample_patch(
    volumes: dict[str, torch.Tensor],
    start: torch.Tensor,
    patch_size: list[int],
    matrix: torch.Tensor,
    field: torch.Tensor | None,
    nearest: set[str],
) -> dict[str, torch.Tensor]:
    """The patch whose unaugmented voxels are ``volumes[..., start:start + patch_size]``, sampled through
    ``matrix`` (about the patch centre) and ``field``; outside the case is 0. Keys in ``nearest`` (labels)
    are sampled by nearest neighbour, the others linearly."""
    dims = len(patch_size)
    mirrors = torch.diagonal(matrix)
    if field is None and torch.equal(matrix, torch.diag(mirrors)) and bool((mirrors.abs() == 1).all()):
        # no rotation, scaling or deformation (most patches): a crop, mirrored, interpolates nothing
        flipped = [1 + axis for axis in range(dims) if mirrors[axis] < 0]
        return {key: _crop(volume, start, patch_size).flip(flipped) for key, volume in volumes.items()}
    centre = start.float() + (torch.tensor(patch_size) - 1) / 2
    axes = [torch.arange(size, dtype=torch.float32) - (size - 1) / 2 for size in patch_size]
    offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    coords = torch.einsum("ij,j...->i...", matrix, offsets) + centre.view(dims, *[1] * dims)
    if field is not None:
        coords = coords + field
    shape = torch.tensor(next(iter(volumes.values())).shape[1:], dtype=torch.float32)
    normalised = 2 * coords / (shape - 1).clamp(min=1).view(dims, *[1] * dims) - 1
    grid = normalised.flip(0).movedim(0, -1)[None]  # grid_sample wants (x, y[, z]): the last axis first
    return {
        key: F.grid_sample(
            volume[None].float(),
            grid,
            mode="nearest" if key in nearest else "bilinear",
            padding_mode="zeros",
            align_corners=True,
        )[0]
        for key, volume in volumes.items()
    }


def _crop(volume: torch.Tensor, start: torch.Tensor, patch_size: list[int]) -> torch.Tensor:
    """``volume[:, start:start + patch_size]``, zero where that reaches outside the volume."""
    patch = volume.new_zeros((volume.shape[0], *patch_size), dtype=torch.float32)
    source, target = [slice(None)], [slice(None)]
    for begin, size, extent in zip(start.tolist(), patch_size, volume.shape[1:]):
        low, high = max(begin, 0), min(begin + size, extent)
        source.append(slice(low, max(high, low)))
        target.append(slice(low - begin, low - begin + max(high - low, 0)))
    patch[tuple(target)] = volume[tuple(source)].float()
    return patch


def intensity(image: torch.Tensor, aug: AugmentationConfig, generator: torch.Generator) -> torch.Tensor:
    """Noise, scale, shift, contrast (gamma), smoothing and bias field, each with its probability,
    with the ranges MONAI's random transforms of the same names use by default here."""
    if fires(aug.noise_prob, generator):
        image = image + torch.randn(image.shape, generator=generator) * uniform(0, 0.1, generator)
    if fires(aug.intensity_prob, generator):
        image = image * (1 + uniform(-0.25, 0.25, generator))
    if fires(aug.intensity_prob, generator):
        image = image + uniform(-0.1, 0.1, generator)
    if fires(aug.gamma_prob, generator):
        image = AdjustContrast(gamma=uniform(0.7, 1.5, generator).item())(image)
    if fires(aug.smooth_prob, generator):
        image = GaussianSmooth(sigma=uniform(0.5, 1.0, generator).item())(image)
    if fires(aug.bias_field_prob, generator):
        bias = RandBiasField(coeff_range=(0.0, 0.1), prob=1.0)
        bias.set_random_state(seed=int(torch.randint(2**31, (), generator=generator)))
        image = bias(image)
    return torch.as_tensor(image).as_subclass(torch.Tensor).float()
