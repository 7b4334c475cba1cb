"""Checkers for the exercises of notebook 10_inpainting: the masked input, pasting the known
region back, and one step of blended diffusion (RePaint's replacement of the known region)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ldm_mini.checks._common import call, compare, passed
from ldm_mini.inpainting.condition import inpainting_condition, latent_mask, paste
from ldm_mini.inpainting.masks import heldout_masks
from ldm_mini.inpainting.repaint import blend_step


def _images_and_masks(batch: int, channels: int, size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, channels, size, size, generator=generator) * 2 - 1
    masks, _ = heldout_masks(batch, size, seed=seed)
    return images, masks


def check_inpainting_condition(fn: Callable) -> None:
    """Exercise (10): ``fn(encode, images, masks, latent_size)`` -> [s E(x * (1 - m)) ; m_f]
    (B, c + 1, h, w): the masked image encoded, then the mask max-pooled to the latent's size
    (1 wherever any pixel of a latent position is missing)."""
    name = "inpainting_condition"

    def encode(x):  # a stand-in for s E(x) with f = 4 and c = 4: anything linear-free works
        return torch.cat([F.avg_pool2d(x, 4) * k for k in (1.0, -2.0, 0.5, 3.0)], dim=1)[:, :4]

    for batch, channels, size in ((2, 1, 32), (3, 3, 32), (1, 3, 64)):
        images, masks = _images_and_masks(batch, channels, size, 1000 + size + channels)
        latent_size = (size // 4, size // 4)
        got = call(name, fn, encode, images.clone(), masks.clone(), latent_size)
        expected = inpainting_condition(encode, images, masks, latent_size)
        nearest = F.interpolate(masks, size=latent_size, mode="nearest")
        average = F.adaptive_avg_pool2d(masks, latent_size)
        mistakes = [
            (
                torch.cat([encode(images), latent_mask(masks, latent_size)], 1),
                "encode the masked image x * (1 - m), not the whole image: the model must not see "
                "what is in the hole",
            ),  # fmt: skip
            (
                torch.cat([encode(images * masks), latent_mask(masks, latent_size)], 1),
                "the mask is 1 where the image is missing: keep x * (1 - m), not x * m",
            ),  # fmt: skip
            (
                torch.cat([encode(images * (1 - masks)), nearest], 1),
                "bring the mask to the latent's size with max-pooling (any missing pixel marks its "
                "position missing), not nearest-neighbour resizing",
            ),  # fmt: skip
            (
                torch.cat([encode(images * (1 - masks)), average], 1),
                "max-pool the mask, do not average it: a latent position is missing when any of "
                "its pixels is",
            ),  # fmt: skip
            (
                torch.cat([latent_mask(masks, latent_size), encode(images * (1 - masks))], 1),
                "the order is [latent ; mask]: the masked image's latent first",
            ),  # fmt: skip
        ]
        compare(name, got, expected, f"images {tuple(images.shape)}", mistakes=mistakes,
                atol=1e-6, hint="torch.cat([encode(x * (1 - m)), F.adaptive_max_pool2d(m, "
                "latent_size)], dim=1)")  # fmt: skip
    passed(name, "3 cases, grey and colour")


def check_paste(fn: Callable) -> None:
    """Exercise (10): ``fn(completed, images, masks)`` -> m * completed + (1 - m) * x."""
    name = "paste"
    for batch, channels in ((2, 1), (3, 3)):
        images, masks = _images_and_masks(batch, channels, 32, 1100 + channels)
        completed = torch.rand(images.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1
        got = call(name, fn, completed.clone(), images.clone(), masks.clone())
        expected = paste(completed, images, masks)
        mistakes = [
            (
                (1 - masks) * completed + masks * images,
                "the mask is 1 where the image is missing: the hole takes the model's pixels, "
                "the rest the original's",
            ),  # fmt: skip
            (completed, "put the known pixels back: (1 - m) * x outside the hole"),
        ]
        compare(name, got, expected, f"images {tuple(images.shape)}", mistakes=mistakes,
                atol=0, rtol=0)  # fmt: skip
    passed(name, "2 cases: the known pixels come back exactly")


def check_blend_step(fn: Callable) -> None:
    """Exercise (10): ``fn(z_model, z_known, keep, abar, noise)`` -> k * (sqrt(abar) z_known +
    sqrt(1 - abar) noise) + (1 - k) * z_model: one step of blended diffusion."""
    name = "blend_step"
    generator = torch.Generator().manual_seed(1200)
    for abar in (0.02, 0.5, 0.97, 1.0):
        shape = (2, 4, 8, 8)
        z_model, z_known, noise = (torch.randn(shape, generator=generator) for _ in range(3))
        keep = (torch.rand(2, 1, 8, 8, generator=generator) > 0.4).float()
        got = call(name, fn, z_model.clone(), z_known.clone(), keep.clone(), abar, noise.clone())
        expected = blend_step(z_model, z_known, keep, abar, noise)
        mistakes = [
            (
                keep * z_known + (1 - keep) * z_model,
                "the known latent must be noised to this step's level: sqrt(abar) z_known + "
                "sqrt(1 - abar) eps, not z_known itself",
            ),  # fmt: skip
            (
                keep * (abar * z_known + (1 - abar) * noise) + (1 - keep) * z_model,
                "the square roots are missing: sqrt(abar) z_known + sqrt(1 - abar) eps",
            ),  # fmt: skip
            (
                (1 - keep) * (math.sqrt(abar) * z_known + math.sqrt(1 - abar) * noise)
                + keep * z_model,
                "keep is 1 where the latent is known: that is where z_known goes",
            ),  # fmt: skip
        ]
        compare(name, got, expected, f"abar = {abar}", mistakes=mistakes, atol=1e-6)
    passed(name, "4 noise levels, from t = T-1 to the clean latent")
