"""Tiled denoising for whole-image super-resolution: coverage, exactness, blending."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldm_mini.superres.tiling import TiledDenoiser, blend_window, tile_starts
from ldm_mini.unet import UNet, unet_preset

pytestmark = pytest.mark.usefixtures("one_thread")


class Pointwise(nn.Module):
    """A denoiser with no spatial context: tiling cannot change its output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mix = nn.Conv2d(4 + 3, 4, kernel_size=1)

    def forward(self, x, t, concat=None, scale=1.0):
        return scale * self.mix(torch.cat([x, concat], dim=1)) * (1 + t.view(-1, 1, 1, 1) / 1000)


@pytest.mark.parametrize(
    "length,tile,overlap", [(10, 4, 1), (16, 8, 4), (17, 8, 3), (8, 8, 2), (5, 8, 2)]
)
def test_tiles_cover_the_image_and_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    covered = torch.zeros(length, dtype=torch.bool)
    for start in starts:
        covered[start : start + size] = True
    assert covered.all() and starts[0] == 0 and starts[-1] + size == length
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + size - b >= overlap, "neighbours share at least `overlap` positions"
    with pytest.raises(ValueError, match="overlap < tile"):
        tile_starts(length, 4, 4)


def test_blend_window_ramps_only_towards_neighbours():
    window = blend_window(8, 6, 3, top=True, bottom=False, left=False, right=True)
    assert window.shape == (8, 6) and window.min() > 0 and window.max() == 1
    assert torch.allclose(window[:3, 0], torch.tensor([0.25, 0.5, 0.75]))
    assert torch.equal(window[3:, 0], torch.ones(5))
    assert torch.allclose(window[5, 3:], torch.tensor([0.75, 0.5, 0.25]))
    # two neighbours' ramps over an exact overlap sum to 1
    left = blend_window(1, 8, 3, False, False, False, True)[0, -3:]
    right = blend_window(1, 8, 3, False, False, True, False)[0, :3]
    assert torch.allclose(left + right, torch.ones(3))


def test_one_tile_is_exactly_the_untiled_model():
    torch.manual_seed(1)
    unet = UNet(unet_preset("tiny", 4, concat_channels=3)).eval()
    for p in unet.parameters():
        nn.init.normal_(p, std=0.05)
    x, y = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 8, 8)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(
            TiledDenoiser(unet, tile=8, overlap=2)(x, t, concat=y), unet(x, t, concat=y)
        )
        # several tiles of a real U-Net (less context per call): the full size, finite
        big_x, big_y = torch.randn(2, 4, 16, 12), torch.randn(2, 3, 16, 12)
        tiled = TiledDenoiser(unet, tile=8, overlap=4)(big_x, t, concat=big_y)
    assert tiled.shape == (2, 4, 16, 12) and torch.isfinite(tiled).all()


def test_tiling_a_context_free_model_changes_nothing():
    model = Pointwise()
    x, y = torch.randn(3, 4, 20, 13), torch.randn(3, 3, 20, 13)
    t = torch.tensor([0, 500, 999])
    with torch.no_grad():
        full = model(x, t, concat=y, scale=2.0)
        for tile, overlap, batch_tiles in [(8, 3, 16), (8, 3, 1), (6, 2, 4), (13, 5, 2)]:
            tiled = TiledDenoiser(model, tile, overlap, batch_tiles)(x, t, concat=y, scale=2.0)
            assert torch.allclose(tiled, full, atol=1e-5), (tile, overlap, batch_tiles)
    with pytest.raises(ValueError, match="overlap < tile"):
        TiledDenoiser(model, tile=4, overlap=6)


def test_seam_ratio_finds_seams_and_passes_smooth_images():
    from ldm_mini.superres.tiling import seam_ratio, tile_borders

    assert tile_borders(20, 8, 3) == [5, 8, 10, 12, 13, 18]  # tiles at 0, 5, 10, 12
    assert tile_borders(8, 8, 2) == []
    generator = torch.Generator().manual_seed(0)
    texture = torch.rand(3, 80, 80, generator=generator) * 0.2
    assert 0.8 < seam_ratio(texture, tile=8, overlap=3, scale=4) < 1.25
    seamed = texture.clone()
    for line in tile_borders(20, 8, 3, scale=4):  # a step at every tile border
        seamed[:, :, line:] += 0.3
        seamed[:, line:, :] += 0.3
    assert seam_ratio(seamed, tile=8, overlap=3, scale=4) > 3
    assert seam_ratio(texture, tile=32, overlap=3, scale=4) != seam_ratio(texture, 32, 3, 4)  # NaN
