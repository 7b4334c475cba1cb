"""The inpainting model's input: the masked image's latent and the mask, concatenated to z_t;
and pasting the known pixels back after decoding. Taught in notebook 10_inpainting.

The paper's inpainting LDM (Sec. 4.5; CompVis' ``ldm/models/diffusion/ddpm.py`` with
``conditioning_key="concat"``) conditions by concatenation, as LDM-SR does: the U-Net sees
[z_t ; s E(x * (1 - m)) ; m_f], where m is the mask (1 = missing), x * (1 - m) the image with
its hole blanked (to 0, mid-grey in [-1, 1]), E the frozen encoder, s the latent scale factor
and m_f the mask brought to the latent's size. A latent position counts as missing when any of
its f x f pixels is (max-pooling, so the model is told everywhere the encoder could have seen
the hole's blank); CompVis resized with nearest neighbours, which can mark a position known
whose pixels were partly blanked.

The decoder cannot give the known pixels back exactly: D(E(x)) is a reconstruction (about 32
dB on Fashion-MNIST), and the latent near the hole mixes known and generated content. So the
known pixels are **pasted** back in pixel space after decoding: x_out = m * D(z_0) + (1 - m) * x,
which makes the known region exact (PSNR outside the mask unbounded) and leaves a seam only
where the generated content disagrees with its border.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_pair", "inpainting_condition", "latent_mask", "masked_image", "paste"]


def check_pair(images: Tensor, masks: Tensor) -> None:
    """Images (B, C, H, W) and masks (B, 1, H, W) of the same size, masks in {0, 1}."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor (B, C, H, W) in [-1, 1], got shape "
            f"{tuple(getattr(images, 'shape', ()))}"
        )
    if not isinstance(masks, Tensor) or masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(
            f"masks must be a tensor (B, 1, H, W), got shape {tuple(getattr(masks, 'shape', ()))}"
        )
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"{masks.shape[0]} masks of {tuple(masks.shape[-2:])} for {images.shape[0]} images "
            f"of {tuple(images.shape[-2:])}: give one mask of the image's size per image"
        )
    if not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError("masks must hold only 0 (known) and 1 (missing)")


def masked_image(images: Tensor, masks: Tensor) -> Tensor:
    """x * (1 - m): the known pixels, the hole blanked to 0 (mid-grey in [-1, 1])."""
    return images * (1 - masks)


def latent_mask(masks: Tensor, latent_size: tuple[int, int]) -> Tensor:
    """m_f (B, 1, h, w): 1 where any pixel of a latent position is missing (max-pooling)."""
    if tuple(masks.shape[-2:]) == tuple(latent_size):
        return masks
    return F.adaptive_max_pool2d(masks, tuple(latent_size))


def inpainting_condition(
    encode, images: Tensor, masks: Tensor, latent_size: tuple[int, int]
) -> Tensor:
    """[s E(x * (1 - m)) ; m_f] (B, c + 1, h, w): what joins z_t along channels.

    ``encode``: images in [-1, 1] -> scaled latents (``LatentDiffusion.encode``, s E(x); for
    pixel space the identity)."""
    # c_masked = s E(x * (1 - m))
    masked_latent = encode(masked_image(images, masks))
    return torch.cat([masked_latent, latent_mask(masks, latent_size).to(masked_latent)], dim=1)


def paste(completed: Tensor, images: Tensor, masks: Tensor) -> Tensor:
    """x_out = m * completed + (1 - m) * x: the known pixels exactly as they were."""
    return masks * completed + (1 - masks) * images
