"""Training-free inpainting with a model that never saw a mask: blended latent diffusion and
RePaint's resampling. Taught in notebook 10_inpainting.

An unconditional (or class-conditional) LDM can fill a hole without training for it
(Avrahami et al. 2023, "Blended Latent Diffusion"; Lugmayr et al. 2022, "RePaint"): at every
sampling step, the latent's known positions are replaced by the known latent noised to the
same level, z_s = k * q(z_s | z_known) + (1 - k) * z_s^model, with z_known = s E(x * (1 - m))
and k = 1 where all of a latent position's pixels are known. The model only ever sees its own
samples, so the generated part follows the known part only through the blending; RePaint
therefore goes back up one step (z_t = sqrt(abar_t / abar_s) z_s + sqrt(1 - abar_t / abar_s)
eps) and redoes it, ``resample`` times per step, so that the model can harmonise the two.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ldm_mini.inpainting.condition import check_pair, latent_mask, masked_image, paste
from ldm_mini.ldm import LatentDiffusion
from ldm_mini.samplers import ClassifierFreeGuidance, ddim_timesteps

__all__ = ["blend_step", "repaint"]


def blend_step(
    z_model: Tensor, z_known: Tensor, keep: Tensor, abar: float, noise: Tensor
) -> Tensor:
    """z_s = k * (sqrt(abar_s) z_known + sqrt(1 - abar_s) eps) + (1 - k) * z_s^model: the known
    latent positions (``keep`` 1) noised to the step's level, the rest from the model."""
    # q(z_s | z_known) = sqrt(abar_s) z_known + sqrt(1 - abar_s) eps
    known = math.sqrt(abar) * z_known + math.sqrt(1 - abar) * noise
    return keep * known + (1 - keep) * z_model


@torch.no_grad()
def repaint(
    ldm: LatentDiffusion,
    images: Tensor,
    masks: Tensor,
    *,
    steps: int = 50,
    resample: int = 1,
    seed: int = 0,
    labels: Tensor | None = None,
    guidance: float = 1.0,
    paste_known: bool = True,
    progress: bool = False,
) -> Tensor:
    """Fill ``images`` (B, C, H, W) in [-1, 1] where ``masks`` (B, 1, H, W) is 1 with an LDM
    trained without masks: DDIM over ``steps`` steps with the known latent blended in at each
    (``resample`` 1: blended latent diffusion), or each step done ``resample`` times with a
    jump back up in between (RePaint). Class-conditional models take ``labels`` (default: the
    null class, unconditional) and ``guidance``. Returns (B, C, H, W) in [-1, 1]."""
    from tqdm.auto import tqdm

    check_pair(images, masks)
    if not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample must be an int >= 1, got {resample!r}")
    if ldm.condition_encoder is not None or ldm.unet.config.concat_channels:
        raise ValueError("repaint takes an unconditional or class-conditional LDM")
    device = ldm.scale_factor.device
    images, masks = images.to(device), masks.to(device=device, dtype=images.dtype)
    f = ldm.downsampling_factor
    latent_size = (images.shape[-2] // f, images.shape[-1] // f)
    # z_known = s E(x * (1 - m)); k = 1 where a latent position's pixels are all known
    z_known = ldm.encode(masked_image(images, masks))
    keep = 1 - latent_mask(masks, latent_size)
    model, kwargs = ldm.unet, {}
    if ldm.num_classes is not None:
        count = images.shape[0]
        labels = torch.full((count,), ldm.num_classes) if labels is None else labels
        kwargs = {"class_labels": labels.to(device)}
        null = {"class_labels": torch.full((count,), ldm.num_classes, device=device)}
        model = ClassifierFreeGuidance(ldm.unet, guidance, null)
    elif labels is not None or guidance != 1.0:
        raise ValueError("this LDM is unconditional: no labels or guidance")
    schedule = ldm.schedule
    generator = torch.Generator(device=device).manual_seed(seed)

    def randn() -> Tensor:
        return torch.randn(z_known.shape, generator=generator, device=device)

    def abar(t: int) -> float:
        return 1.0 if t < 0 else float(schedule.alphas_cumprod[t])

    timesteps = ddim_timesteps(schedule.num_timesteps, steps)
    z = randn()
    was_training = ldm.unet.training
    ldm.unet.eval()
    try:
        for index, t in enumerate(tqdm(timesteps, desc="RePaint", disable=not progress)):
            t_next = timesteps[index + 1] if index + 1 < len(timesteps) else -1
            for round_ in range(resample):
                t_batch = torch.full((z.shape[0],), t, dtype=torch.long, device=device)
                x0, eps = schedule.predict_x0_and_eps(model(z, t_batch, **kwargs), z, t_batch)
                # DDIM (eta 0): z_s = sqrt(abar_s) z0^ + sqrt(1 - abar_s) eps^
                z_next = math.sqrt(abar(t_next)) * x0 + math.sqrt(1 - abar(t_next)) * eps
                z_next = blend_step(z_next, z_known, keep, abar(t_next), randn())
                if round_ + 1 < resample and t_next >= 0:
                    # back up: z_t = sqrt(abar_t / abar_s) z_s + sqrt(1 - abar_t / abar_s) eps
                    ratio = abar(t) / abar(t_next)
                    z = math.sqrt(ratio) * z_next + math.sqrt(1 - ratio) * randn()
            z = z_next
    finally:
        ldm.unet.train(was_training)
    completed = ldm.decode(z).clamp(-1, 1)
    return paste(completed, images, masks) if paste_known else completed
