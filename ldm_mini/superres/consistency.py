"""Consistency with the input: iterative back-projection of an upscaled image onto its input.

Taught in notebook 08_super_resolution. When the degradation D is known (LDM-SR's bicubic
downsampling), an upscaled image x should degrade back to the input y: D(x) = y. A learned
upscaler through the first stage rarely does, because the decoder shifts low frequencies
(colours, smooth gradients) that y pins down exactly. Iterative back-projection (Irani and
Peleg 1991) corrects x with the upsampled residual of the input,

    x <- x + U(y - D(x)),        U: bicubic upsampling by the same factor,

which keeps the high frequencies x invented (what D removes) and takes the low ones from y.
Zero-shot diffusion restorers apply the same correction inside the sampling loop (ILVR, Choi
et al. 2021; DDNM, Wang et al. 2023); here it runs once, after sampling, for every method
alike, so a comparison stays fair. D∘U is not exactly the identity, so a few iterations get
closer to D(x) = y than one. A blind degradation is random and unknown at test time, so
there is no D to project with (LDM-BSR).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ldm_mini.superres.degradations import bicubic_downsample


def bicubic_upsample(low: Tensor, factor: int) -> Tensor:
    """Bicubic interpolation (B, C, h, w) -> (B, C, factor h, factor w), clamped to [-1, 1]: U
    here, and the baseline without learning in :mod:`.evaluation`."""
    size = (low.shape[-2] * factor, low.shape[-1] * factor)
    return F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def check_iterations(iterations: int) -> None:
    """Refuse anything but an int >= 0 (a bool too) as a number of back-projection iterations."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"back-projection iterations must be an int >= 0, got {iterations!r}")


def back_project(images: Tensor, low: Tensor, factor: int = 4, iterations: int = 3) -> Tensor:
    """Images (B, C, factor h, factor w) in [-1, 1] made consistent with their bicubic-degraded
    inputs ``low`` (B, C, h, w) in [-1, 1]; ``iterations`` >= 0 corrections (0: unchanged)."""
    check_iterations(iterations)
    if not isinstance(images, Tensor) or images.ndim != 4 or not isinstance(low, Tensor):
        raise ValueError("images and low must be tensors (B, C, H, W) and (B, C, h, w)")
    expected = (low.shape[0], low.shape[1], low.shape[-2] * factor, low.shape[-1] * factor)
    assert tuple(images.shape) == expected, (
        f"images {tuple(images.shape)} are not {factor}x the inputs {tuple(low.shape)}"
    )
    low = low.to(images)
    for _ in range(iterations):
        # x <- x + U(y - D(x))
        residual = low - bicubic_downsample(images, factor)
        images = (images + bicubic_upsample(residual, factor)).clamp(-1.0, 1.0)
    return images


def consistency_error(images: Tensor, low: Tensor, factor: int = 4) -> Tensor:
    """Per image, the RMS of D(x) - y in [-1, 1] units, (B,): 0 for a perfectly consistent x."""
    difference = bicubic_downsample(images, factor) - low.to(images)
    return difference.pow(2).flatten(1).mean(dim=1).sqrt()


def check_projectable(degradation: str) -> None:
    """Back-projection needs the degradation operator: refuse anything but bicubic."""
    if degradation != "bicubic":
        raise ValueError(
            f"back-projection needs the known degradation D; this model was trained on "
            f"{degradation!r} inputs, whose degradation is random and unknown at test time. "
            "Use --back-project 0 (the default) for LDM-BSR."
        )
