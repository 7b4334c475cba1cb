"""Inpainting with a trained inpainting LDM: fill the masked part of images. No training code.

Taught in notebook 10_inpainting. :func:`inpaint` encodes the masked image once, c =
[s E(x * (1 - m)) ; m_f] (:func:`ldm_mini.inpainting.inpainting_condition`), samples z_0 from
noise with c concatenated to z_t at every step, decodes x = D(z_0 / s) and pastes the known
pixels back (the decoder alone does not return them exactly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ldm_mini.inpainting.condition import check_pair, inpainting_condition, paste
from ldm_mini.ldm import LatentDiffusion

__all__ = ["check_inpaint_input", "inpaint"]


def check_inpaint_input(ldm: LatentDiffusion, images: Tensor, masks: Tensor) -> None:
    """Images (B, C, H, W) in [-1, 1] with C the model's channels and H, W divisible by its
    f; masks (B, 1, H, W) in {0, 1}: else a clear ValueError."""
    check_pair(images, masks)
    f = ldm.downsampling_factor
    config = getattr(ldm.first_stage, "config", None)
    # an autoencoder's image channels, or the identity's (pixel space: the latent's channels)
    expected = config.in_channels if config is not None else ldm.latent_channels
    if images.shape[1] != expected:
        raise ValueError(f"this model fills {expected}-channel images, got {images.shape[1]}")
    height, width = images.shape[-2:]
    if height % f or width % f:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the first stage's f = {f}: crop or "
            f"pad it to a multiple of {f}"
        )
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images hold NaN or inf values")


@torch.no_grad()
def inpaint(
    ldm: LatentDiffusion,
    images: Tensor,
    masks: Tensor,
    *,
    steps: int = 50,
    sampler: str = "ddim",
    seed: int = 0,
    eta: float = 0.0,
    paste_known: bool = True,
    progress: bool = False,
) -> Tensor:
    """Fill ``images`` (B, C, H, W) in [-1, 1] where ``masks`` (B, 1, H, W) is 1; returns
    (B, C, H, W) in [-1, 1]. ``paste_known``: put the known pixels back after decoding (True:
    they come back exactly; False: the decoder's version of them, to see why pasting is
    needed). A full mask (everything missing) samples the model unconditionally."""
    check_inpaint_input(ldm, images, masks)
    device = ldm.scale_factor.device
    images, masks = images.to(device), masks.to(images.dtype).to(device)
    f = ldm.downsampling_factor
    latent_size = (images.shape[-2] // f, images.shape[-1] // f)
    # c = [s E(x * (1 - m)) ; m_f]
    condition = inpainting_condition(ldm.encode, images, masks, latent_size)
    generator = torch.Generator(device=device).manual_seed(seed)
    completed, _ = ldm.sample(
        images.shape[0], latent_size, sampler=sampler, steps=steps, generator=generator,
        concat=condition, eta=eta, progress=progress,
    )  # fmt: skip
    completed = completed.clamp(-1, 1)
    if completed.shape[-2:] != images.shape[-2:]:  # never for a first stage with its own f
        completed = F.interpolate(completed, size=images.shape[-2:], mode="bilinear")
    # x_out = m * D(z_0) + (1 - m) * x
    return paste(completed, images, masks) if paste_known else completed
