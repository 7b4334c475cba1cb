"""Checkers for the exercises of notebook 11_layouts_and_semantic_maps: a layout's box tokens
(the condition fed by cross-attention) and a label map's concatenated input (the condition
fed by concatenation)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from ldm_mini.checks._common import call, compare, passed
from ldm_mini.data.shapes import CLASS_NAMES
from ldm_mini.layouts import (
    EMPTY,
    NUM_LABELS,
    PAD,
    LayoutTokenizer,
    label_map_condition,
)


def _layouts(batch: int, slots: int, seed: int) -> torch.Tensor:
    """Random layouts (batch, slots, 5): boxes in [0, 1], some touching the far edge, the last
    row with one empty slot."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(batch, slots, 2, 2, generator=generator).sort(dim=2).values
    boxes = rearrange(corners, "b n corner xy -> b n (corner xy)")
    boxes[0, 0, 2:] = 1.0  # a box reaching the bottom-right corner of the image
    classes = torch.randint(len(CLASS_NAMES), (batch, slots, 1), generator=generator).float()
    table = torch.cat([classes, boxes], -1)
    if slots > 1:
        table[-1, -1, 0] = EMPTY
    return table


def _floor(v: torch.Tensor, grid: int) -> torch.Tensor:
    return (v * grid).floor().clamp(0, grid - 1).long()


def _rounded(v: torch.Tensor, grid: int) -> torch.Tensor:
    return (v * grid).round().clamp(0, grid - 1).long()


def _with_cells(expected: torch.Tensor, layouts: torch.Tensor, offset: int,
                cell: Callable) -> torch.Tensor:  # fmt: skip
    """The expected ids with the corners' cells computed by another rule ``cell(x, y)``."""
    ids = expected.clone()
    present = layouts[..., 0] != EMPTY
    for k, (x, y) in enumerate(((layouts[..., 1], layouts[..., 2]),
                                (layouts[..., 3], layouts[..., 4]))):  # fmt: skip
        cells = cell(x, y)
        ids[:, 2 + k :: 3] = torch.where(present, cells + offset, torch.full_like(cells, PAD))
    return ids


def check_box_tokens(fn: Callable) -> None:
    """Exercise (11): ``fn(layouts, grid)`` -> token ids (B, 1 + 3N): ``<start>`` (1), then per
    object its class token (2 + class) and the cells of its top-left and bottom-right corners
    (2 + 18 + row * grid + column, the cell holding the point, the last cell for a corner on
    the far edge); an empty slot (class -1) is three padding tokens (0)."""
    name = "box_tokens"
    for batch, slots, grid, seed in ((3, 2, 16, 1), (2, 3, 8, 2), (4, 1, 4, 3)):
        layouts = _layouts(batch, slots, seed)
        tokenizer = LayoutTokenizer(grid, slots)
        expected, _ = tokenizer.encode(layouts)
        got = call(name, fn, layouts.clone(), grid)
        offset = tokenizer.cell_offset
        swapped = _with_cells(expected, layouts, offset,
                              lambda x, y, g=grid: _floor(x, g) * g + _floor(y, g))
        rounding = _with_cells(expected, layouts, offset,
                               lambda x, y, g=grid: _rounded(y, g) * g + _rounded(x, g))
        unclamped = _with_cells(expected, layouts, offset,
                                lambda x, y, g=grid: (y * g).floor().long() * g
                                + (x * g).floor().long())  # fmt: skip
        no_padding = expected.clone()
        no_padding[:, 1:] = tokenizer.encode(
            torch.where(layouts[..., :1] == EMPTY, layouts.clamp(min=0), layouts)
        )[0][:, 1:]
        mistakes = [
            (swapped, "the cell is row * grid + column, with the row from y and the column "
                      "from x: you swapped them"),
            (rounding, "the cell holding a point is floor(x * grid), not round(x * grid)"),
            (unclamped, "a corner on the far edge (x = 1 or y = 1) belongs to the last cell: "
                        "clamp the row and column to grid - 1"),
            (no_padding, "an empty slot (class -1) is three padding tokens (0), not an object"),
        ]  # fmt: skip
        compare(name, got, expected, f"{batch} layouts of {slots} slots, grid {grid}",
                mistakes=mistakes, atol=0, rtol=0,
                hint="ids = [1] then per object [2 + class, 20 + cell(x0, y0), 20 + cell(x1, y1)]"
                " with cell(x, y) = row * grid + column")  # fmt: skip
    passed(name, "3 cases, grids 16, 8 and 4, empty slots and corners on the edge")


def check_label_map_input(fn: Callable) -> None:
    """Exercise (11): ``fn(label_maps, latent_size)`` -> (B, 19, h, w): each label one-hot
    (0 the background, 1..18 the classes), then each latent cell the fraction of its f x f
    pixels with each label (area averaging)."""
    name = "label_map_input"
    for batch, size, latent, seed in ((2, 32, 8, 1), (3, 16, 4, 2), (1, 32, 16, 3)):
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.randint(NUM_LABELS, (batch, size // 2, size // 2), generator=generator)
        maps = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)  # regions, not noise
        expected = label_map_condition(maps, latent)
        got = call(name, fn, maps.clone(), latent)
        factor = size // latent
        one_hot = rearrange(F.one_hot(maps, NUM_LABELS).float(), "b h w c -> b c h w")
        nearest = one_hot[..., ::factor, ::factor]
        mistakes = [
            (nearest, "average each latent cell's f x f pixels; taking one pixel per cell "
                      "(nearest) drops the rest of the map"),
            (F.adaptive_max_pool2d(one_hot, latent), "average the one-hot labels over each "
             "cell (the fraction of the cell in each class), do not max-pool them"),
        ]  # fmt: skip
        compare(name, got, expected, f"maps {tuple(maps.shape)} to {latent}x{latent}",
                mistakes=mistakes, atol=1e-6,
                hint="F.one_hot(maps, 19) is (B, H, W, 19): move the labels to the channel "
                "axis, then F.adaptive_avg_pool2d(..., latent_size)")  # fmt: skip
    passed(name, "3 cases, f = 4, 4 and 2")
