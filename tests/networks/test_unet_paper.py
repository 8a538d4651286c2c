"""The U-Net of the paper: its sizes, its crop-and-concatenate skips, and overlap-tile inference."""

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.networks.unet_paper import (
    OriginalUNet,
    check_tile,
    input_for_output,
    output_size,
    overlap_tile_logits,
    valid_input_size,
)


def test_sizes_are_the_papers():
    assert output_size(572, depth=4) == 388  # figure 1 of the paper
    assert output_size(571, depth=4) is None and output_size(100, depth=4) is None
    assert valid_input_size(570, depth=4) == 572 and input_for_output(388, depth=4) == 572
    paper = OriginalUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=[64, 128, 256, 512, 1024])
    # counted by hand from figure 1: 18,842,048 encoder + 2,786,240 up-convolutions + 9,402,240 decoder + 130 head
    assert sum(p.numel() for p in paper.parameters()) == 31_030_658
    with pytest.raises(ConfigError, match="570 is not an input length .* nearest are 556 and 572"):
        check_tile([572, 570], depth=4)


@pytest.mark.parametrize("dims", [2, 3])
def test_the_output_is_the_centre_of_the_input(dims):
    network = OriginalUNet(dims, 1, 3, channels=[2, 4, 8]).eval()
    tile = [60] * dims  # two poolings: 60 in, 20 out
    with torch.no_grad():
        assert network(torch.randn(2, 1, *tile)).shape == (2, 3, *[20] * dims)


def _network():
    torch.manual_seed(0)
    return OriginalUNet(2, 1, 2, channels=[2, 4, 8]).eval()


def test_overlap_tiles_fit_seamlessly_and_each_sees_its_true_context():
    network, image = _network(), torch.randn(1, 1, 130, 95)
    with torch.no_grad():
        logits = overlap_tile_logits(network, image, tile=[60, 60], depth=2, batch_size=3)
        assert logits.shape == (1, 2, 130, 95)
        # away from the border a tile's output depends on the image alone, so any tile reproduces it
        assert torch.allclose(logits[..., 40:60, 40:60], network(image[..., 20:80, 20:80]), atol=1e-5)
        assert torch.allclose(logits[..., 45:65, 33:53], network(image[..., 25:85, 13:73]), atol=1e-5)


def test_past_the_border_the_image_is_mirrored():
    network, image = _network(), torch.randn(1, 1, 30, 30)  # smaller than one output tile plus its margin
    with torch.no_grad():
        logits = overlap_tile_logits(network, image, tile=[60, 60], depth=2, batch_size=1)
        mirrored = torch.from_numpy(np.pad(image.numpy(), [(0, 0), (0, 0), (20, 20), (20, 20)], mode="symmetric"))
        assert logits.shape == (1, 2, 30, 30)
        assert torch.allclose(logits[..., :20, :20], network(mirrored[..., :60, :60]), atol=1e-5)
