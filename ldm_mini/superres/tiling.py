"""Whole-image super-resolution in tiles: the denoiser evaluated on overlapping windows, blended.

Taught in notebook 08_super_resolution. A U-Net trained on 64x64 crops sees a 512x512 image
as a 128x128 latent; evaluating it on the whole latent at once (the paper's fully convolutional
sampling) works but its attention and memory grow with the size, and its receptive field never
saw such extents. :class:`TiledDenoiser` instead evaluates the model on overlapping tiles of
``tile`` x ``tile`` latent positions at **every sampling step** and blends the predictions with
weights that fall off linearly towards each tile's inner borders (in the spirit of
MultiDiffusion, Bar-Tal et al. 2023). Because every step sees one blended, consistent latent,
the tiles cannot drift apart and no seams form; an input that fits in one tile is passed
through unchanged (exactly the untiled result).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap``
    positions shared by neighbours; the last tile ends exactly at ``length``."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(
            f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}"
        )
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def _ramp(length: int, overlap: int, start: bool, end: bool) -> Tensor:
    weights = torch.ones(length)
    if overlap:
        ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        if start:
            weights[:overlap] = ramp
        if end:
            weights[-overlap:] = torch.minimum(weights[-overlap:], ramp.flip(0))
    return weights


def blend_window(
    height: int, width: int, overlap: int, top: bool, bottom: bool, left: bool, right: bool
) -> Tensor:
    """Weights (height, width) in (0, 1]: 1 inside, a linear ramp over ``overlap`` positions at
    each border that touches a neighbour (``top`` etc. True), 1 at the image's own borders."""
    # w(i, j) = ramp_rows(i) * ramp_cols(j)
    rows = _ramp(height, min(overlap, height // 2), top, bottom)
    cols = _ramp(width, min(overlap, width // 2), left, right)
    return rows[:, None] * cols[None, :]


class TiledDenoiser(nn.Module):
    """Wrap a denoiser ``model(x_t, t, concat=y, ...)`` to run on overlapping tiles.

    ``forward`` takes x_t (B, C, H, W) and any tensor keywords of the same H, W (the
    concatenated low-resolution image), cuts both into ``tile`` x ``tile`` windows that
    overlap by ``overlap`` positions, evaluates ``model`` on up to ``batch_tiles`` windows at a
    time, and returns the weighted average of the overlapping predictions, (B, C, H, W).
    Other keywords are passed unchanged. H or W at most ``tile``: one call, unchanged.
    """

    def __init__(self, model: nn.Module, tile: int, overlap: int, batch_tiles: int = 16) -> None:
        super().__init__()
        tile_starts(tile, tile, overlap)  # validates tile and overlap
        self.model = model
        self.tile = int(tile)
        self.overlap = int(overlap)
        self.batch_tiles = int(batch_tiles)

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        height, width = x.shape[-2:]
        if height <= self.tile and width <= self.tile:
            return self.model(x, t, **kwargs)
        spatial = {
            key: value
            for key, value in kwargs.items()
            if isinstance(value, Tensor) and value.ndim == 4 and value.shape[-2:] == x.shape[-2:]
        }
        other = {key: value for key, value in kwargs.items() if key not in spatial}
        rows = tile_starts(height, min(self.tile, height), self.overlap)
        cols = tile_starts(width, min(self.tile, width), self.overlap)
        tile_h, tile_w = min(self.tile, height), min(self.tile, width)
        windows = [(r, c) for r in rows for c in cols]
        total = torch.zeros_like(x)
        weight_sum = torch.zeros(1, 1, height, width, dtype=x.dtype, device=x.device)
        batch = x.shape[0]
        for start in range(0, len(windows), self.batch_tiles):
            chunk = windows[start : start + self.batch_tiles]

            def cut(tensor: Tensor, chunk: list[tuple[int, int]] = chunk) -> Tensor:
                return torch.cat([tensor[..., r : r + tile_h, c : c + tile_w] for r, c in chunk])

            times = t.repeat(len(chunk)) if isinstance(t, Tensor) and t.ndim == 1 else t
            out = self.model(cut(x), times, **{k: cut(v) for k, v in spatial.items()}, **other)
            for index, (r, c) in enumerate(chunk):
                window = blend_window(
                    tile_h,
                    tile_w,
                    self.overlap,
                    top=r > 0,
                    bottom=r + tile_h < height,
                    left=c > 0,
                    right=c + tile_w < width,
                ).to(x)
                piece = out[index * batch : (index + 1) * batch]
                # sum_k w_k eps_k over the tiles k covering each position, then / sum_k w_k
                total[..., r : r + tile_h, c : c + tile_w] += piece * window
                weight_sum[..., r : r + tile_h, c : c + tile_w] += window
        return total / weight_sum


def tile_borders(length: int, tile: int, overlap: int, scale: int = 1) -> list[int]:
    """Pixel positions (latent positions x ``scale``) where a tile starts or ends inside the
    image: where a seam would show."""
    starts = tile_starts(length, min(tile, length), overlap)
    size = min(tile, length)
    edges = {s for s in starts if s > 0} | {s + size for s in starts if s + size < length}
    return sorted(edge * scale for edge in edges)


def seam_ratio(image: Tensor, tile: int, overlap: int, scale: int) -> float:
    """How much stronger the image's gradients are across tile borders than elsewhere.

    ``image`` (C, H, W) upscaled with tiles of ``tile`` latent positions overlapping by
    ``overlap``, ``scale`` pixels per latent position (the first stage's f). The mean
    absolute difference between neighbouring pixels across the border lines, divided by the
    mean over every other line: about 1 without seams, clearly above 1 with them. NaN when
    the image has no interior border (one tile).
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got {tuple(image.shape)}")
    # |x[:, :, j] - x[:, :, j - 1]| per column line j (and per row line i)
    across_columns = (image[:, :, 1:] - image[:, :, :-1]).abs().mean(dim=(0, 1))
    across_rows = (image[:, 1:, :] - image[:, :-1, :]).abs().mean(dim=(0, 2))
    height, width = image.shape[-2:]
    border, other = [], []
    for profile, length in ((across_columns, width), (across_rows, height)):
        lines = set(tile_borders(length // scale, tile, overlap, scale))
        for j in range(1, length):
            (border if j in lines else other).append(float(profile[j - 1]))
    if not border:
        return float("nan")
    return (sum(border) / len(border)) / max(sum(other) / len(other), 1e-12)
