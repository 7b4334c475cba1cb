"""Masks for inpainting: what is missing, drawn the way LaMa and the paper's inpainting model
train on them. Taught in notebook 10_inpainting.

A mask is a float tensor (1, H, W) with **1 where the image is missing** (the hole, to be
filled) and 0 where it is known, as in the paper's inpainting model (the masked image is
x * (1 - m)). LaMa (Suvorov et al. 2022) showed that a model learns to fill holes of every
shape when it trains on wide, varied masks; its generator mixes thick and thin brush strokes
and boxes. :func:`random_mask` draws one of these kinds:

* ``thick`` / ``thin``: 1 to 4 brush strokes, random walks of a few segments drawn with a round
  brush (width 8-20% / 2-6% of the image side);
* ``box_large`` / ``box_small``: one rectangle with sides of 30-70% / 10-30% of the image;
* ``full``: everything missing. The model then sees no known pixel and learns to sample
  unconditionally, which is the empty-condition case of classifier-free guidance: one model
  both inpaints and generates.

:func:`heldout_masks` gives a fixed set for evaluation (its own seed, never drawn in
training).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

MASK_KINDS = ("thick", "thin", "box_large", "box_small", "full")
# the mix drawn in training when no other is given (full: the unconditional case)
DEFAULT_MIX = {"thick": 0.3, "thin": 0.15, "box_large": 0.2, "box_small": 0.25, "full": 0.1}
HELDOUT_SEED = 2_000_003  # a seed training never uses for masks
# coverage that held-out masks keep to: at least a few pixels, at most 60% of the image
HELDOUT_COVERAGE = (0.02, 0.6)

__all__ = [
    "DEFAULT_MIX",
    "MASK_KINDS",
    "check_mask_mix",
    "heldout_masks",
    "random_mask",
]


def check_mask_mix(mix: dict[str, float]) -> dict[str, float]:
    """``mix`` (kind -> weight >= 0) normalised to sum 1; a clear error for unknown kinds."""
    if not isinstance(mix, dict) or not mix:
        raise ValueError(f"the mask mix must be a dict kind -> weight, got {mix!r}")
    unknown = sorted(set(mix) - set(MASK_KINDS))
    if unknown:
        raise ValueError(f"unknown mask kind(s) {unknown}; kinds: {list(MASK_KINDS)}")
    if any(not isinstance(w, int | float) or w < 0 for w in mix.values()):
        raise ValueError(f"mask weights must be numbers >= 0, got {mix}")
    total = float(sum(mix.values()))
    if total <= 0:
        raise ValueError(f"mask weights must not all be 0, got {mix}")
    return {kind: float(weight) / total for kind, weight in mix.items()}


def _strokes(size: int, rng: np.random.Generator, width: tuple[float, float]) -> Image.Image:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 5))):
        brush = max(1, round(size * rng.uniform(*width)))
        x, y = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * math.pi)
        points = [(x, y)]
        for _ in range(int(rng.integers(2, 6))):
            angle += rng.uniform(-math.pi / 2, math.pi / 2)
            length = size * rng.uniform(0.1, 0.4)
            x = float(np.clip(x + length * math.cos(angle), 0, size - 1))
            y = float(np.clip(y + length * math.sin(angle), 0, size - 1))
            points.append((x, y))
        draw.line(points, fill=255, width=brush, joint="curve")
        radius = brush / 2  # round ends, as a brush leaves them
        for px, py in (points[0], points[-1]):
            draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=255)
    return canvas


def _box(size: int, rng: np.random.Generator, side: tuple[float, float]) -> Image.Image:
    canvas = Image.new("L", (size, size), 0)
    height, width = (max(1, round(size * rng.uniform(*side))) for _ in range(2))
    top = int(rng.integers(0, size - height + 1))
    left = int(rng.integers(0, size - width + 1))
    ImageDraw.Draw(canvas).rectangle([left, top, left + width - 1, top + height - 1], fill=255)
    return canvas


def random_mask(size: int, rng: np.random.Generator, kind: str | None = None,
                mix: dict[str, float] | None = None) -> Tensor:  # fmt: skip
    """One mask (1, size, size) in {0, 1}, 1 = missing: of ``kind``, or a kind drawn from
    ``mix`` (default :data:`DEFAULT_MIX`) with ``rng``."""
    if kind is None:
        weights = check_mask_mix(mix or DEFAULT_MIX)
        kind = str(rng.choice(list(weights), p=list(weights.values())))
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; kinds: {list(MASK_KINDS)}")
    if kind == "full":
        return torch.ones(1, size, size)
    if kind in ("thick", "thin"):
        picture = _strokes(size, rng, (0.08, 0.2) if kind == "thick" else (0.02, 0.06))
    else:
        picture = _box(size, rng, (0.3, 0.7) if kind == "box_large" else (0.1, 0.3))
    return torch.from_numpy(np.asarray(picture) > 127).float()[None]


def heldout_masks(n: int, size: int, seed: int = HELDOUT_SEED) -> tuple[Tensor, list[str]]:
    """n fixed masks (n, 1, size, size) for evaluation, the four partial kinds in turn, each
    covering 2-60% of the image (redrawn until it does), and their kinds."""
    rng = np.random.default_rng(seed)
    kinds = [MASK_KINDS[i % 4] for i in range(n)]
    masks = []
    for kind in kinds:
        for _ in range(1000):
            mask = random_mask(size, rng, kind)
            if HELDOUT_COVERAGE[0] <= float(mask.mean()) <= HELDOUT_COVERAGE[1]:
                break
        else:  # pragma: no cover - only for sizes too small to draw a mask on
            raise ValueError(
                f"cannot draw a {kind} mask covering {HELDOUT_COVERAGE} of {size}x{size}"
            )
        masks.append(mask)
    return torch.stack(masks), kinds
