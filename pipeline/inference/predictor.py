"""Sliding-window prediction, optionally mirrored (test-time augmentation), and mapping it back onto
the input's own voxel grid within bounded memory: full-volume buffers stay float32 only on the
model's (coarser) grid; on the input's grid one class is resampled at a time, labels are uint8 and
probabilities, when asked for, uint8 scaled by 255."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from math import prod
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer, sliding_window_inference

from pipeline.data.transforms import IMAGE, prepare
from pipeline.inference.postprocess import keep_largest_component
from pipeline.networks.description import ModelDescription
from pipeline.networks.unet_paper import overlap_tile_logits

PROBABILITY_SCALE = 255  # a probability p is stored as round(255 p) in uint8


class MirroredSoftmax(torch.nn.Module):
    """Class probabilities averaged over every mirroring of the input's spatial axes (nnU-Net's
    test-time augmentation): 8 flips for a 3D window, 4 for a 2D one (a 2D network run over slices
    sees 2D windows, so only its in-plane axes are flipped)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        spatial = range(2, windows.dim())
        flips = [list(axes) for n in range(len(spatial) + 1) for axes in itertools.combinations(spatial, n)]
        total = None
        for axes in flips:
            probabilities = torch.softmax(self.network(windows.flip(axes)), 1).flip(axes)
            total = probabilities if total is None else total.add_(probabilities)
        return total.div_(len(flips))


def sliding_window_logits(
    network: torch.nn.Module,
    images: torch.Tensor,
    description: ModelDescription,
    compute_device: torch.device | None = None,
) -> torch.Tensor:
    """Logits for a batch of prepared images, tiled with Gaussian-weighted overlapping patches
    (2D patches on each slice, where a 2D network was trained on slices of volumes); the U-Net
    of the paper tiles its own way (overlap-tile). Windows run on ``compute_device`` (by default
    the images'); the output is stitched where the images are."""
    options = {"roi_size": description.patch_size, "sw_batch_size": description.inference.sw_batch_size}
    options.update(overlap=description.inference.overlap, mode="gaussian", sw_device=compute_device)
    with torch.inference_mode():
        if description.network.name == "unet_paper":
            return _overlap_tile(network, images.to(compute_device or images.device), description)
        if description.slice_axis is not None:  # a 2D network over a volume, slice by slice
            return SliceInferer(spatial_dim=description.slice_axis, progress=False, **options)(images, network)
        return sliding_window_inference(images, predictor=network, **options)


def sliding_window_probabilities(
    network: torch.nn.Module,
    images: torch.Tensor,
    description: ModelDescription,
    tta: bool = False,
    compute_device: torch.device | None = None,
) -> torch.Tensor:
    """Class probabilities (float32). With ``tta`` each window is predicted mirrored every way and
    the averaged probabilities are blended; without, the blended logits go through a softmax."""
    if tta:
        return sliding_window_logits(MirroredSoftmax(network), images, description, compute_device)
    logits = sliding_window_logits(network, images, description, compute_device)
    with torch.inference_mode():
        for slab in logits.split(8, dim=-1):  # in place, a few slices at a time: no second full-size buffer
            slab.copy_(torch.softmax(slab, 1))
    return logits


def stitching_device(spatial_shape: tuple[int, ...], n_classes: int, device: torch.device) -> torch.device:
    """Where the full-volume buffers (image, logits, window weights) live: on the GPU where they take
    under half its free memory, else in CPU memory, the windows still running on the GPU."""
    if device.type != "cuda":
        return device
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return device if (n_classes + 2) * prod(spatial_shape) * 4 < free_bytes / 2 else torch.device("cpu")


def _overlap_tile(network: torch.nn.Module, images: torch.Tensor, description: ModelDescription) -> torch.Tensor:
    tile, depth = description.patch_size, len(description.network.channels) - 1
    batch_size, axis = description.inference.sw_batch_size, description.slice_axis
    if axis is None:
        return overlap_tile_logits(network, images, tile, depth, batch_size)
    # a 2D network over volumes: the slices become the batch
    slices = images.movedim(2 + axis, 0)
    logits = overlap_tile_logits(network, slices.flatten(0, 1), tile, depth, batch_size)
    return logits.unflatten(0, slices.shape[:2]).movedim(0, 2 + axis)


class Prediction(NamedTuple):
    """A label map (uint8) indexed like the input image, and, when asked for, the class probabilities on the
    same grid: uint8 (class, *shape), p * PROBABILITY_SCALE."""

    labels: np.ndarray
    probabilities: np.ndarray | None


def predict(
    network: torch.nn.Module,
    description: ModelDescription,
    image: MetaTensor,
    device: torch.device,
    tta: bool = False,
    network_lock: AbstractContextManager | None = None,
    probabilities: bool = False,
) -> Prediction:
    """Labels indexed like ``image`` (channel-first, as read), whatever preparation did in between.
    ``network_lock`` is held while the network runs (not while the image is prepared or the result resampled),
    so that a worker with two cases in flight keeps its network busy with one while the other is resampled."""
    prepared = prepare(description.preprocess, (IMAGE,))({IMAGE: image})[IMAGE]
    n_classes = description.network.out_channels
    with network_lock or nullcontext():
        stitch = stitching_device(tuple(prepared.shape[1:]), n_classes, device)
        images = prepared.as_tensor()[None].to(stitch)
        model_grid = sliding_window_probabilities(network, images, description, tta, device)[0]
    model_grid = model_grid.to("cpu", torch.float16)
    # resample probabilities, not labels, back to the input grid; then take the most likely class
    labels, on_grid = on_input_grid(model_grid, prepared.affine, image, probabilities)
    # the post-processing that training chose (decided on its validation cases), if any
    return Prediction(keep_largest_component(labels, description.largest_component_classes), on_grid)


def _geometry(affine: torch.Tensor | np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """Spacing, direction and origin (ITK's, in LPS) of a RAS voxel-to-world affine."""
    dimension = len(affine) - 1
    lps = np.diag([-1.0, -1.0] + [1.0] * (dimension - 1)) @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:dimension, :dimension], axis=0)
    return (
        spacing.tolist(),
        (lps[:dimension, :dimension] / spacing).flatten().tolist(),
        lps[:dimension, dimension].tolist(),
    )


def on_input_grid(
    model_grid: torch.Tensor, affine: torch.Tensor, image: MetaTensor, keep_probabilities: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample one class at a time (linearly, in physical space) onto the input's grid, keeping the
    running maximum: the most likely class, ties to the lower index as argmax gives. Outside the
    model's grid (a cropped-off border) the background has probability 1. Values are resampled as
    255 p + 0.5, so that the uint8 probabilities are their truncation (p rounded) with no float copy."""
    shape = tuple(int(s) for s in image.shape[1:])
    spacing, direction, origin = _geometry(image.affine)
    source_spacing, source_direction, source_origin = _geometry(affine)
    # all full-size arrays in ITK's voxel order (reversed axes), so that every step runs over contiguous
    # memory; the (x, y, z) views returned are Fortran-ordered, as NIfTI files are written
    labels = np.zeros(shape[::-1], np.uint8)
    probabilities = np.empty((len(model_grid), *shape[::-1]), np.uint8) if keep_probabilities else None
    best = None
    for index, channel in enumerate(model_grid):
        source = sitk.GetImageFromArray(channel.float().mul_(PROBABILITY_SCALE).add_(0.5).numpy().T)
        source.SetSpacing(source_spacing)
        source.SetDirection(source_direction)
        source.SetOrigin(source_origin)
        background = (PROBABILITY_SCALE if index == 0 else 0) + 0.5
        resampled = sitk.Resample(
            source, shape, sitk.Transform(), sitk.sitkLinear, origin, spacing, direction, background, sitk.sitkFloat32
        )
        probability = sitk.GetArrayViewFromImage(resampled)
        if best is None:
            best = probability.copy()
        else:
            labels[probability > best] = index
            np.maximum(best, probability, out=best)
        if probabilities is not None:
            probabilities[index] = probability  # truncated: round(255 p)
        del probability, resampled
    if probabilities is not None:
        probabilities = probabilities.transpose(0, *range(probabilities.ndim - 1, 0, -1))
    return labels.T, probabilities


def validation_label_maps(
    network: torch.nn.Module, loader: Iterable[dict[str, torch.Tensor]], description: ModelDescription
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(prediction, reference) class-index maps of each prepared validation case, one at a time, on
    the model's grid: what training decides post-processing on."""
    device = next(network.parameters()).device
    network.eval()
    for batch in loader:
        logits = sliding_window_logits(network, batch["image"].to(device), description)
        yield torch.argmax(logits[0], dim=0).cpu().numpy().astype(np.uint8), batch["label"][0, 0].numpy()
