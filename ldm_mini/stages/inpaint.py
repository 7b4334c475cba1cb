"""The inpainting recipe: a latent diffusion model that fills masked images, trained with the
one engine by the recipe of :mod:`.base`. Taught in notebook 10_inpainting.

The paper's inpainting LDM (Sec. 4.5) conditions by concatenation: the U-Net sees
[z_t ; s E(x * (1 - m)) ; m_f] (:func:`ldm_mini.inpainting.inpainting_condition`) and learns
L = E ||eps - eps_theta([z_t ; c], t)||^2 (or the v target) for z_0 = s E(x). Each training
image gets a random mask (:mod:`ldm_mini.inpainting.masks`: strokes, boxes, and sometimes the
whole image, so that the same model also samples unconditionally), drawn from a generator fixed
by (seed, step), so that several processes or a resumed run train exactly like one.
``first_stage.checkpoint = "identity"`` trains the same model in pixel space (LDM-1).

A config has the sections of every diffusion stage (``first_stage``, ``model``, ``diffusion``,
``init``, ``optim``, ``train``) and ``data`` (the images, as for the LDM), ``masks`` (``mix``:
kind -> weight) and ``latents`` (scale factor, cache of E(x)).
:func:`ldm_mini.pipelines.load_inpaint` loads the result and
:func:`ldm_mini.pipelines.inpaint` fills images with it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ldm_mini.configs import Section, load_stage_preset
from ldm_mini.data.config import DataConfig, build_dataset
from ldm_mini.inpainting.condition import inpainting_condition
from ldm_mini.inpainting.masks import DEFAULT_MIX, check_mask_mix, heldout_masks, random_mask
from ldm_mini.ldm import LatentDiffusion
from ldm_mini.pipelines.inpaint import inpaint
from ldm_mini.pipelines.load import load_first_stage
from ldm_mini.stages.base import (
    DiffusionInitConfig,
    DiffusionStage,
    estimated_scale_factor,
    parse_diffusion_sections,
    scale_factor_of,
    train_stage,
    warm_start,
)
from ldm_mini.stages.ldm import encode_dataset
from ldm_mini.unet import UNet, UNetConfig

STAGE = "inpaint"
log = logging.getLogger("ldm_mini.stages.inpaint")


@dataclass
class MasksConfig(Section):
    """How training masks are drawn: ``mix`` maps each kind of
    :data:`~ldm_mini.inpainting.masks.MASK_KINDS` to its weight (None: the default mix, 10%
    ``full``: the unconditional case)."""

    mix: dict[str, float] | None = None

    def __post_init__(self) -> None:
        try:
            check_mask_mix(self.mix if self.mix is not None else DEFAULT_MIX)
        except ValueError as err:
            raise ValueError(f"masks.mix: {err}") from None

    def weights(self) -> dict[str, float]:
        return check_mask_mix(self.mix if self.mix is not None else DEFAULT_MIX)


@dataclass
class InpaintLatentsConfig(Section):
    """The latent scale factor s and the cache of E(x) (the masked image is encoded anew at
    every step, as its mask is new)."""

    scale_factor: float | None = None  # None: 1 / std of the encoded training latents
    cache: bool = True  # encode the clean training images once (when there is no flip)


def load_inpaint_preset(name: str) -> dict[str, Any]:
    """The preset ``configs/inpaint/NAME.json`` with its U-Net from ``configs/unet/NAME.json``."""
    return load_stage_preset(STAGE, name)


def parse_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a full inpainting config dict into its dataclasses (unknown keys are errors)."""
    return parse_diffusion_sections(
        config, {"data": DataConfig, "masks": MasksConfig, "latents": InpaintLatentsConfig}
    )


def training_masks(
    seed: int, step: int, total: int, size: int, weights: dict[str, float]
) -> Tensor:
    """The masks (total, 1, size, size) of one training step's global batch, from a generator
    fixed by (seed, step): each process takes its slice."""
    rng = np.random.default_rng([seed, step, 7])  # 7: apart from the noise and t draws
    return torch.stack([random_mask(size, rng, mix=weights) for _ in range(total)])


class ImagesAndLatents(torch.utils.data.Dataset):
    """Training images with their cached scaled latents s E(x)."""

    def __init__(self, images, latents: Tensor) -> None:
        self.images, self.latents = images, latents

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index]["image"], "latent": self.latents[index], "index": index}


class InpaintStage(DiffusionStage):
    """The inpainting LDM as a stage of the engine: AdamW on the U-Net, its EMA, the first
    stage frozen."""

    name = STAGE

    def loss(self, optimizer, batch, step, scratch):
        ldm, images = self.ldm, batch["image"]
        with torch.no_grad():
            # z_0 = s E(x)
            z0 = batch["latent"] if "latent" in batch else ldm.encode(images)
        draws = self.draws(z0, step, scratch)
        total = draws.t.shape[0]
        masks = training_masks(self.parsed["train"].seed, step, total, images.shape[-1],
                               self.parsed["masks"].weights())[draws.part]  # fmt: skip
        with torch.no_grad():
            # c = [s E(x * (1 - m)) ; m_f]
            condition = inpainting_condition(
                ldm.encode, images, masks.to(images), tuple(z0.shape[-2:])
            )
        return self.diffusion_loss(z0, draws, concat=condition)

    @torch.no_grad()
    def sample_images(self, batch):
        images = batch["image"][:6]
        masks, _ = heldout_masks(images.shape[0], images.shape[-1])
        masks = masks.to(images)
        completed = inpaint(self.ldm, images, masks, steps=20, seed=0)
        return torch.cat([images * (1 - masks), completed, images])

    def own_config(self) -> dict[str, Any]:
        return {"masks": self.parsed["masks"].to_dict()}


def make_stage(config: dict[str, Any], device: str = "cpu"):
    """Build (stage, training dataset, engine config) from a full inpainting config dict."""
    parsed = parse_config(config)
    data: DataConfig = parsed["data"]
    images = build_dataset(data, seed=parsed["train"].seed)
    first_stage, first_stage_config = load_first_stage(
        parsed["first_stage"].checkpoint, images.channels
    )
    channels = first_stage.config.latent_channels if first_stage_config else images.channels
    model_values = dict(parsed["model"])
    model_values.update(
        in_channels=channels, out_channels=channels, concat_channels=channels + 1,
        num_classes=None, context_dim=None,
    )  # fmt: skip
    torch.manual_seed(parsed["train"].seed)
    unet = UNet(UNetConfig.from_dict(model_values))
    init: DiffusionInitConfig = parsed["init"]
    warm = warm_start(unet, init, first_stage, STAGE) if init.checkpoint is not None else None
    first_stage = first_stage.to(device)
    latents: InpaintLatentsConfig = parsed["latents"]
    cache = None
    if latents.cache and not data.hflip:
        start = time.perf_counter()
        cache = encode_dataset(first_stage, images, device=device)[0]
        log.info("encoded %d images in %.1f s", len(images), time.perf_counter() - start)
    scale = scale_factor_of(latents.scale_factor, warm, init)
    scale = estimated_scale_factor(scale, first_stage_config, first_stage, images, cache, device)
    ldm = LatentDiffusion(first_stage, unet, parsed["diffusion"].build(), scale).to(device)
    dataset = images if cache is None else ImagesAndLatents(images, cache * scale)
    return InpaintStage(ldm, parsed, first_stage_config), dataset, parsed["train"]


def train_inpaint(
    config: dict[str, Any], out: str | Path, resume: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Train (or resume) an inpainting run into ``out``; returns the last logged values."""
    return train_stage(make_stage, config, out, resume, progress)
