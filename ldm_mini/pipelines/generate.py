"""Sampling an LDM: n images in batches, reproducible from a seed, for any condition.

Taught in notebooks 06_latent_diffusion (class labels), 07_conditioning (text prompts,
classifier-free guidance) and 11_layouts_and_semantic_maps (layouts, label maps). Calls
:meth:`ldm_mini.ldm.LatentDiffusion.sample` (any sampler of
:mod:`ldm_mini.samplers`) batch by batch and decodes x = D(z_0 / s).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldm_mini.ldm import LatentDiffusion
from ldm_mini.samplers import check_eta


def sample_labels(ldm: LatentDiffusion, n: int) -> Tensor | None:
    """Labels 0, 1, ..., K-1, 0, 1, ... for n class-balanced samples (None if unconditional)."""
    if ldm.num_classes is None:
        return None
    return torch.arange(n) % ldm.num_classes


@torch.no_grad()
def generate(
    ldm: LatentDiffusion,
    n: int,
    image_size: int,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    labels: Tensor | None = None,
    batch_size: int = 250,
    return_trajectory: bool = False,
    progress: bool = False,
    prompts: list[str] | None = None,
    eta: float = 0.0,
    layouts: Tensor | None = None,
    label_maps: Tensor | None = None,
):
    """n images (n, C, H, W) in [-1, 1] in batches, reproducible from ``seed``.

    ``eta`` (DDIM only): the share of DDPM's fresh noise at each step, 0 (deterministic, the
    default) to 1 (as much noise as DDPM); a stochastic sampler corrects part of an
    undertrained model's error (Karras et al. 2022, Sec. 4).
    Class-conditional models get ``labels`` (default: 0, 1, ..., K-1, 0, ...); text models
    need ``prompts`` (n strings), layout models ``layouts`` (n, N, 5) from
    :func:`ldm_mini.layouts.layouts_to_tensor`, label-map models ``label_maps`` (n, H, W) of
    labels 0..18 at the image size (:mod:`ldm_mini.layouts`). Returns ``(images, labels,
    trajectories)``; trajectories
    (scaled latents after each step) only for the first batch and only when
    ``return_trajectory``. ``progress``: a bar per batch over the sampler's steps, and one
    over the images when there is more than one batch.
    """
    from tqdm.auto import tqdm

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n is the number of images to generate: a positive int, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if ldm.conditioning == "text" and (prompts is None or len(prompts) != n):
        raise ValueError(f"this LDM is text-conditional: pass prompts, a list of {n} strings.")
    if ldm.conditioning == "layout" and (layouts is None or len(layouts) != n):
        raise ValueError(f"this LDM is layout-conditional: pass layouts ({n}, N, 5).")
    if label_maps is not None:
        from ldm_mini.layouts import check_label_maps

        label_maps = check_label_maps(label_maps, image_size)
        if len(label_maps) != n:
            raise ValueError(f"{len(label_maps)} label maps for {n} images: pass one per image")
    check_eta(eta)
    if eta != 0.0 and sampler != "ddim":
        raise ValueError(
            f"eta is a setting of the DDIM sampler, not of {sampler!r}: use the sampler ddim."
        )
    if image_size % ldm.downsampling_factor:
        raise ValueError(
            f"image size {image_size} is not divisible by the first stage's f = "
            f"{ldm.downsampling_factor}."
        )
    latent = image_size // ldm.downsampling_factor
    labels = sample_labels(ldm, n) if labels is None else labels
    device = ldm.scale_factor.device
    generator = torch.Generator(device=device).manual_seed(seed)
    images, trajectory = [], None
    overall = tqdm(total=n, desc="samples", unit="image", disable=not progress or n <= batch_size)
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        batch_labels = None if labels is None else labels[start : start + count]
        batch_prompts = None if prompts is None else list(prompts[start : start + count])
        batch_layouts = None if layouts is None else layouts[start : start + count]
        concat = None
        if label_maps is not None:
            from ldm_mini.layouts import label_map_condition

            concat = label_map_condition(label_maps[start : start + count], latent)
        out, output = ldm.sample(
            count,
            (latent, latent),
            sampler=sampler,
            steps=steps,
            labels=batch_labels,
            prompts=batch_prompts,
            layouts=batch_layouts,
            concat=concat,
            guidance=guidance,
            generator=generator,
            return_trajectory=return_trajectory and start == 0,
            progress=progress,
            eta=eta,
        )
        images.append(out.cpu())
        overall.update(count)
        if return_trajectory and start == 0:
            trajectory = output
    overall.close()
    return torch.cat(images), labels, trajectory
