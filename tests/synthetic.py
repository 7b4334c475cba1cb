"""Seeded synthetic images shared by the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smooth_images(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Seeded natural-ish images in [-1, 1]: bicubic upsampled 4x4 noise (smooth colour blobs)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=generator) * 2 - 1
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return smooth.clamp(-1, 1)


def noisy(images: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    """``images`` plus seeded Gaussian noise of std ``sigma``, clamped to [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=generator)).clamp(-1, 1)
