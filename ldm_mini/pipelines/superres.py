"""Super-resolution with a trained SR checkpoint: LDM-SR / LDM-BSR sampling, the regression
baseline, tiling, predict-and-refine and back-projection. No training code.

Taught in notebook 08_super_resolution. The low-resolution image y is concatenated to z_t
(:func:`ldm_mini.superres.concat_condition`); the diffusion objective samples z_0 from noise
with any sampler, the regression baseline predicts it in one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ldm_mini.ldm import LatentDiffusion, same_latents
from ldm_mini.samplers import check_eta, ddim_timesteps, start_timesteps
from ldm_mini.superres.concat import concat_condition

OBJECTIVES = ("diffusion", "regression")
# predict and refine: LDM-SR starts from the regression's prediction noised to this step (of
# 1000); chosen on 600 crops of the training photos (photos_ldm_sr's card has the sweep)
REFINE_T = 60


def regression_predict(
    ldm: LatentDiffusion,
    low: Tensor,
    latent_size: tuple[int, int],
    denoiser: nn.Module | None = None,
) -> Tensor:
    """The regression baseline: z_0 = f_theta([0 ; y], t = 0), (B, c, h, w) scaled latents.

    ``denoiser``: a wrapper of ``ldm.unet`` to call instead (e.g. a :class:`.TiledDenoiser`)."""
    condition = concat_condition(low, latent_size)
    zeros = torch.zeros(
        low.shape[0], ldm.latent_channels, *latent_size, device=low.device, dtype=low.dtype
    )
    t = torch.zeros(low.shape[0], dtype=torch.long, device=low.device)
    return (denoiser or ldm.unet)(zeros, t, concat=condition)


@torch.no_grad()
def super_resolve(
    ldm: LatentDiffusion,
    low: Tensor,
    objective: str = "diffusion",
    *,
    factor: int = 4,
    steps: int = 50,
    sampler: str = "ddim",
    seed: int = 0,
    tile: int | None = None,
    overlap: int = 8,
    back_projection: int = 0,
    temperature: float = 1.0,
    eta: float = 0.0,
    refine_from: LatentDiffusion | None = None,
    refine_t: int = REFINE_T,
    progress: bool = False,
) -> Tensor:
    """Low-resolution images (B, 3, h, w) in [-1, 1] -> (B, 3, factor h, factor w).

    The latent has the size of the output / f; ``tile`` (latent positions) evaluates the
    U-Net on overlapping tiles at every step (:class:`.tiling.TiledDenoiser`), for inputs
    larger than the training crops. ``back_projection`` > 0: that many iterations of
    :func:`.consistency.back_project` on the output (models of the bicubic degradation only:
    check with :func:`.consistency.check_projectable`). ``temperature`` T > 0 scales the
    starting noise, x_T ~ N(0, T^2 I): below 1 it trades the samples' diversity (and detail)
    for fidelity (diffusion only). ``eta`` in [0, 1]: the DDIM sampler's fresh noise at each
    step (0: deterministic, the default; 1: as much as DDPM's ancestral sampling).

    ``refine_from`` (diffusion only): a regression model on the same latents (see
    :func:`load_refiner`). Predict and refine (Whang et al. 2022): its prediction z_reg is
    noised to the first DDIM step t_0 <= ``refine_t`` and LDM-SR runs the remaining steps from
    there, x_t0 = sqrt(abar_t0) z_reg + sqrt(1 - abar_t0) T eps, instead of from pure noise at
    t = T-1. ``progress`` shows the sampler's steps.
    """
    from ldm_mini.superres.consistency import back_project, check_iterations
    from ldm_mini.superres.tiling import TiledDenoiser

    check_iterations(back_projection)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if objective == "regression" and temperature != 1.0:
        raise ValueError("temperature scales the diffusion sampler's noise; regression has none")
    check_eta(eta)
    if eta and (objective == "regression" or sampler != "ddim"):
        raise ValueError(f"eta is the DDIM sampler's noise; it needs the diffusion objective and "
                         f"sampler 'ddim', got {objective!r} and {sampler!r}")  # fmt: skip
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if refine_from is not None:
        check_refiner(ldm, refine_from, objective, sampler)
    height, width = low.shape[-2] * factor, low.shape[-1] * factor
    f = ldm.downsampling_factor
    if height % f or width % f:
        raise ValueError(
            f"output size {height}x{width} is not divisible by the first stage's f={f}"
        )
    latent_size = (height // f, width // f)
    device = ldm.scale_factor.device
    low = low.to(device)
    if objective == "regression":
        z0 = regression_predict(ldm, low, latent_size)
        return back_project(ldm.decode(z0).clamp(-1, 1), low, factor, back_projection)
    denoiser = None if tile is None else TiledDenoiser(ldm.unet, tile, overlap)
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (low.shape[0], ldm.latent_channels, *latent_size)
    # x_T ~ N(0, T^2 I)
    noise = temperature * torch.randn(shape, generator=generator, device=device)
    start_timestep = None
    if refine_from is not None:
        regression = None if tile is None else TiledDenoiser(refine_from.unet, tile, overlap)
        z_regression = regression_predict(refine_from, low, latent_size, regression)
        # the same latents E(x) scaled by each model's own s
        z_regression = z_regression * (ldm.scale_factor / refine_from.scale_factor)
        visited = ddim_timesteps(ldm.schedule.num_timesteps, steps)
        start_timestep = start_timesteps(visited, refine_t)[0]
        # x_t0 = sqrt(abar_t0) z_reg + sqrt(1 - abar_t0) T eps
        noise = ldm.schedule.q_sample(z_regression, start_timestep, noise)
    images, _ = ldm.sample(
        low.shape[0],
        latent_size,
        sampler=sampler,
        steps=steps,
        generator=generator,
        noise=noise,
        concat=concat_condition(low, latent_size),
        denoiser=denoiser,
        eta=eta,
        start_timestep=start_timestep,
        progress=progress,
    )
    return back_project(images, low, factor, back_projection)


def check_refiner(
    ldm: LatentDiffusion, refine_from: LatentDiffusion, objective: str, sampler: str
) -> None:
    """Refuse a refinement start that cannot work: LDM-SR with DDIM, the same latents."""
    if objective != "diffusion" or sampler != "ddim":
        raise ValueError(
            "refine_from starts LDM-SR's DDIM sampler from a regression's prediction; it needs "
            f"the diffusion objective and sampler 'ddim', got {objective!r} and {sampler!r}"
        )
    if not same_latents(ldm.first_stage, refine_from.first_stage):
        raise ValueError(
            "refine_from was trained on other latents than this LDM-SR (their first stages' "
            "encoders differ); give a regression checkpoint on the same first stage"
        )


def load_refiner(config: dict, refine_from: str, device: str = "cpu") -> LatentDiffusion:
    """The regression checkpoint ``refine_from`` that an LDM-SR checkpoint (its ``config``)
    starts from in predict-and-refine, checked: LDM-SR is diffusion, the refiner regression,
    for the same upscaling factor."""
    from ldm_mini.pipelines.load import load_sr

    if config["objective"]["kind"] != "diffusion":
        raise ValueError(
            "refine_from starts LDM-SR from a regression's prediction: the checkpoint is not an "
            "LDM-SR (diffusion) checkpoint"
        )
    refiner, refiner_config = load_sr(refine_from, device)
    if refiner_config["objective"]["kind"] != "regression":
        raise ValueError(f"refine_from {refine_from} is not a regression checkpoint")
    if refiner_config["data"]["factor"] != config["data"]["factor"]:
        raise ValueError(f"refine_from {refine_from} was trained for another upscaling factor")
    return refiner


def crop_to_fit(low: Tensor, ldm: LatentDiffusion, factor: int) -> Tensor:
    """``low`` (B, 3, h, w) cropped at the right and bottom by the few pixels that keep its
    latent, (h factor / f) x (w factor / f), from splitting into the U-Net's levels."""
    multiple = ldm.unet.config.downsampling_factor * ldm.downsampling_factor

    def usable(size: int) -> int:
        while size > 0 and (size * factor) % multiple:
            size -= 1
        return size

    height, width = low.shape[-2:]
    keep_h, keep_w = usable(height), usable(width)
    if min(keep_h, keep_w) < 4:
        raise ValueError(
            f"the input is {width}x{height}: too small, it needs at least 4 pixels a side"
        )
    return low[..., :keep_h, :keep_w]
