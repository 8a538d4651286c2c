"""The U-Net of Ronneberger et al. (2015) as published, which MONAI does not provide.

Unpadded 3x3 convolutions make the output smaller than the input: a tile predicts only its
centre, with the border as context. Training crops the labels to the output, and inference
tiles the image seamlessly (``overlap_tile_logits``), mirroring it at the border.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers import Pool
from torch import nn

from pipeline.errors import ConfigError


def _double_conv(dims: int, in_channels: int, out_channels: int, norm: str | None, dropout: float) -> nn.Sequential:
    options = {"kernel_size": 3, "padding": 0, "act": "RELU", "norm": norm, "dropout": dropout or None}
    return nn.Sequential(
        Convolution(dims, in_channels, out_channels, **options),
        Convolution(dims, out_channels, out_channels, **options),
    )


def center_crop(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    starts = [(have - want) // 2 for have, want in zip(tensor.shape[2:], shape)]
    return tensor[(..., *[slice(s, s + n) for s, n in zip(starts, shape)])]


class OriginalUNet(nn.Module):
    """``len(channels) - 1`` max-pool steps; the paper has channels (64, 128, 256, 512, 1024) and no normalisation."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: list[int],
        norm: str | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.depth = len(channels) - 1
        self.down = nn.ModuleList()
        for index, width in enumerate(channels):
            self.down.append(
                _double_conv(spatial_dims, channels[index - 1] if index else in_channels, width, norm, dropout)
            )
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        self.up = nn.ModuleList(
            UpSample(spatial_dims, wide, narrow, scale_factor=2, mode="deconv")
            for wide, narrow in zip(channels[:0:-1], channels[-2::-1])
        )
        self.up_conv = nn.ModuleList(
            _double_conv(spatial_dims, 2 * narrow, narrow, norm, dropout) for narrow in channels[-2::-1]
        )
        self.head = Convolution(spatial_dims, channels[0], out_channels, kernel_size=1, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level < self.depth:
                skips.append(x)
                x = self.pool(x)
        for upsample, block, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = upsample(x)
            x = block(torch.cat([center_crop(skip, tuple(x.shape[2:])), x], dim=1))
        return self.head(x)


def output_size(input_size: int, depth: int) -> int | None:
    """The output length for an input length along one axis; None where pooling would meet an odd length."""
    size = input_size
    for _ in range(depth):
        size -= 4
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4
    for _ in range(depth):
        size = 2 * size - 4
    return size if size > 0 else None


def valid_input_size(at_least: int, depth: int) -> int:
    """The smallest input length, not below ``at_least``, that the network takes whole."""
    size = at_least
    while output_size(size, depth) is None:
        size += 1
    return size


def overlap_tile_logits(
    network: nn.Module, images: torch.Tensor, tile: list[int], depth: int, batch_size: int
) -> torch.Tensor:
    """Logits over the whole image from seamless output tiles; each input tile adds context
    around its output, taken from the image or, past its border, from its mirror image."""
    spatial = images.shape[2:]
    out_tile = [output_size(t, depth) for t in tile]
    margins = [(t - o) // 2 for t, o in zip(tile, out_tile)]
    counts = [-(-s // o) for s, o in zip(spatial, out_tile)]
    pad = [(0, 0), (0, 0), *[(m, m + c * o - s) for m, c, o, s in zip(margins, counts, out_tile, spatial)]]
    padded = torch.from_numpy(np.pad(images.cpu().numpy(), pad, mode="symmetric")).to(images.device)
    starts = [tuple(i * o for i, o in zip(index, out_tile)) for index in itertools.product(*map(range, counts))]
    logits = None
    for first in range(0, len(starts), batch_size):
        chunk = starts[first : first + batch_size]
        windows = torch.cat([padded[(..., *[slice(s, s + t) for s, t in zip(start, tile)])] for start in chunk])
        predicted = network(windows).reshape(len(chunk), images.shape[0], -1, *out_tile)
        if logits is None:
            logits = images.new_zeros((images.shape[0], predicted.shape[2], *[c * o for c, o in zip(counts, out_tile)]))
        for start, tile_logits in zip(chunk, predicted):
            logits[(..., *[slice(s, s + o) for s, o in zip(start, out_tile)])] = tile_logits
    return logits[(..., *[slice(0, s) for s in spatial])]


def input_for_output(at_least: int, depth: int) -> int:
    """The smallest valid input length whose output is at least ``at_least`` long."""
    return valid_input_size(at_least + 4 * (3 * 2**depth - 2), depth)  # input minus output, for any valid input


def check_tile(tile: list[int], depth: int) -> None:
    for size in tile:
        if output_size(size, depth) is None:
            below = next((s for s in range(size - 1, 0, -1) if output_size(s, depth)), None)
            raise ConfigError(
                f"train.patch_size: {size} is not an input length the U-Net of the paper takes with {depth} poolings "
                f"(every length before a pooling must be even); the nearest are {below} and {valid_input_size(size, depth)}"
            )
