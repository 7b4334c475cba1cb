"""Image grids, captions, boxes and masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_mini import viz


def test_make_grid_places_images_row_major():
    images = torch.stack([torch.full((3, 4, 4), v) for v in (-1.0, 0.0, 1.0)])
    grid = viz.make_grid(images, ncols=2, padding=1, pad_value=7)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 3)
    assert (grid[1:5, 1:5] == 0).all()  # -1 -> 0
    assert (grid[1:5, 6:10] == 128).all()  # 0 -> 127.5, rounded
    assert (grid[6:10, 1:5] == 255).all()  # 1 -> 255
    assert (grid[6:10, 6:10] == 7).all() and (grid[0] == 7).all()  # blank cell, padding


def test_value_range_and_mixed_inputs():
    unit = torch.full((1, 1, 2, 2), 0.5)
    assert (viz.to_uint8_images(unit, value_range=(0, 1)) == 128).all()
    mixed = [Image.new("L", (3, 3), 10), Image.new("RGB", (3, 3), (1, 2, 3)), torch.zeros(3, 3, 3)]
    array = viz.to_uint8_images(mixed)
    assert array.shape == (3, 3, 3, 3) and (array[0] == 10).all()
    with pytest.raises(ValueError, match="differ in size"):
        viz.to_uint8_images([Image.new("L", (3, 3)), Image.new("L", (4, 4))])
    with pytest.raises(AssertionError, match="1 or 3 channels"):
        viz.to_uint8_images(torch.zeros(2, 4, 5, 5))


def test_show_images_captions_one_axis_per_image():
    figure = viz.show_images(torch.zeros(5, 3, 8, 8), captions=list("abcde"), ncols=3)
    titled = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titled == list("abcde") and len(figure.axes) == 6
    with pytest.raises(ValueError, match="5 images but 2 captions"):
        viz.show_images(torch.zeros(5, 3, 8, 8), captions=["a", "b"])


def test_show_images_nearest_draws_pixels_as_blocks():
    images = torch.zeros(2, 3, 4, 4)
    images[:, :, ::2, ::2] = 1.0  # a checkerboard that smoothing would blur into grey
    sharp = viz.show_images(images, interpolation="nearest")
    assert {axis.images[0].get_interpolation() for axis in sharp.axes if axis.images} == {"nearest"}
    smooth = viz.show_images(images)
    assert {axis.images[0].get_interpolation() for axis in smooth.axes if axis.images} == {
        "antialiased"
    }


def test_overlay_mask_paints_only_the_masked_pixels():
    image = Image.new("RGB", (4, 4), (255, 255, 255))
    mask = Image.fromarray(np.array([[0, 1, 1, 0]] * 2 + [[0, 0, 2, 2]] * 2, np.uint8))
    painted = np.asarray(viz.overlay_mask(image, mask))
    assert (painted[0, 0] == 255).all()
    assert tuple(painted[0, 1]) == viz.OVERLAY_COLOURS[0]
    assert tuple(painted[3, 3]) == viz.OVERLAY_COLOURS[1]


def test_draw_boxes_scales_and_outlines():
    boxed = viz.draw_boxes(
        Image.new("RGB", (8, 8), (255, 255, 255)), [(2, 2, 6, 6)], ["x"], scale=4
    )
    pixels = np.asarray(boxed)
    assert boxed.size == (32, 32)
    assert tuple(pixels[8, 16]) == viz.OVERLAY_COLOURS[0]  # top edge of the box
    assert tuple(pixels[0, 0]) == (255, 255, 255)


def test_show_token_attention_draws_one_panel_per_token():
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from ldm_mini.viz import show_token_attention

    image = torch.zeros(3, 16, 16)
    maps = torch.rand(6, 16, 16)
    fig = show_token_attention(image, maps, ["a", "red", "circle"], title="t")
    assert len(fig.axes) == 4 and fig.axes[2].get_title() == "red"
    # the first panel keeps the colours; under each heat map the image is grey (2-D)
    red = torch.zeros(3, 16, 16)
    red[0] = 1.0
    fig = show_token_attention(red, maps, ["a", "red", "circle"])
    assert fig.axes[0].images[0].get_array().ndim == 3
    backdrop = fig.axes[1].images[0].get_array()
    assert (
        backdrop.ndim == 2
        and abs(float(backdrop.mean()) - (0.299 * 255 + 0.587 * 127.5 + 0.114 * 127.5)) < 1
    )
    with pytest.raises(ValueError, match="image's size"):
        show_token_attention(image, torch.rand(6, 8, 8), ["a"])
    with pytest.raises(ValueError, match="7 tokens for 6 maps"):
        show_token_attention(image, maps, list("abcdefg"))
