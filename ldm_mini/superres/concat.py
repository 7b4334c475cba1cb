"""Conditioning by concatenation: the low-resolution image joined to z_t along channels.

Taught in notebook 08_super_resolution. The paper conditions LDM-SR on the low-resolution
image y by concatenating it with the U-Net's input (Sec. 4.4): with f = 4 and a 4x
degradation, y already has the latent's spatial size (a 64x64 crop gives a 16x16 latent and a
16x16 low-resolution image); otherwise it is resized to it first (bicubic, antialiased).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldm_mini.superres.degradations import resize


def concat_condition(low: Tensor, latent_size: tuple[int, int]) -> Tensor:
    """Low-resolution images (B, C, h, w) in [-1, 1] -> (B, C, *latent_size), resized only
    when h, w differ from the latent's size."""
    if not isinstance(low, Tensor) or low.ndim != 4 or not low.is_floating_point():
        raise ValueError(
            "low must be a float tensor (B, C, h, w) in [-1, 1], got "
            f"{getattr(low, 'dtype', type(low).__name__)} of shape "
            f"{tuple(getattr(low, 'shape', ()))}"
        )
    if tuple(low.shape[-2:]) == tuple(latent_size):
        return low
    return resize(low, tuple(latent_size), "bicubic")


def unet_input(z_t: Tensor, low: Tensor) -> Tensor:
    """What the U-Net's first convolution sees: torch.cat([z_t, y], dim=1), (B, c + C, h, w)."""
    condition = concat_condition(low, tuple(z_t.shape[-2:]))
    if condition.shape[0] != z_t.shape[0]:
        raise ValueError(f"{condition.shape[0]} low-resolution images for {z_t.shape[0]} latents")
    # [z_t ; y]: the condition joins the noisy latent along channels
    return torch.cat([z_t, condition.to(z_t)], dim=1)
