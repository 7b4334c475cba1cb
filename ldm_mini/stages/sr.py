"""The super-resolution recipe: training LDM-SR / LDM-BSR, and the regression baseline.

Taught in notebook 08_super_resolution; by the recipe of :mod:`.base`.
:func:`ldm_mini.pipelines.load_sr` loads the result, :func:`ldm_mini.pipelines.super_resolve`
upscales with it and :func:`ldm_mini.evaluation.evaluate_sr` measures it. A run trains the
U-Net on random crops of a dataset (``photos`` by default): the crop x is encoded,
z_0 = s E(x), and its degraded version y (bicubic or blind,
:mod:`ldm_mini.superres.degradations`) is concatenated to z_t. Two objectives share the
config, the U-Net and the checkpoint format:

* ``diffusion`` (LDM-SR): L = E ||eps - eps_theta([z_t ; y], t)||^2, sampled with any sampler
  (the presets predict v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0 instead of eps: with eps the
  U-Net learned to use y at high noise much later, see configs/sr/cpu.json);
* ``regression`` (the paper's baseline in Table 5): the same U-Net maps [0 ; y] at t = 0
  straight to z_0, L = ||z_0 - f_theta([0 ; y])||^2, one forward pass to sample.

``init.checkpoint`` warm-starts the U-Net from an earlier SR checkpoint of the same objective
on the same latents (e.g. the shipped one, to train it further on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ldm_mini.configs import Section, load_stage_preset
from ldm_mini.ldm import LatentDiffusion, estimate_scale_factor
from ldm_mini.pipelines.load import load_first_stage
from ldm_mini.pipelines.superres import OBJECTIVES, regression_predict, super_resolve
from ldm_mini.stages import base
from ldm_mini.superres.concat import concat_condition
from ldm_mini.superres.data import SRCrops, check_rescale
from ldm_mini.superres.degradations import DEGRADATIONS, make_degradation
from ldm_mini.unet import UNet, UNetConfig

STAGE = "sr"


@dataclass
class SRDataConfig(Section):
    """Where the training crops come from and how they are degraded."""

    dataset: str = "photos"
    split: str = "train"
    crop_size: int = 64  # high-resolution crop, pixels
    degradation: str = "bicubic"  # or "blind"
    factor: int = 4  # the low-resolution input is crop_size / factor pixels
    crops_per_epoch: int = 2000
    hflip: bool = True
    options: dict[str, Any] | None = None  # passed to ldm_mini.data.load_dataset
    jitter_colours: bool = False  # random channel order and saturation of the targets
    rescale: list[float] | None = None  # [lo, hi]: shrink each photo by s in [lo, hi] first
    rotate90: bool = False  # also turn each crop by a random multiple of 90 degrees

    def __post_init__(self) -> None:
        if self.degradation not in DEGRADATIONS:
            raise ValueError(
                f"data.degradation must be one of {sorted(DEGRADATIONS)}, got {self.degradation!r}"
            )
        if self.crops_per_epoch < 1:
            raise ValueError(f"data.crops_per_epoch must be >= 1, got {self.crops_per_epoch}")
        try:
            check_rescale(self.rescale)
        except ValueError as err:
            raise ValueError(f"data.{err}") from None


@dataclass
class ObjectiveConfig(Section):
    """``diffusion`` (LDM-SR) or ``regression`` (the baseline: the same U-Net, one pass)."""

    kind: str = "diffusion"

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"objective.kind must be one of {OBJECTIVES}, got {self.kind!r}")


@dataclass
class SRLatentsConfig(Section):
    """The latent scale factor s (None: 1 / std of the latents of 512 training crops)."""

    scale_factor: float | None = None


def load_sr_preset(name: str) -> dict[str, Any]:
    """The SR preset ``configs/sr/NAME.json`` with its U-Net from ``configs/unet/NAME.json``."""
    return load_stage_preset(STAGE, name)


def parse_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a full SR config dict into its dataclasses (unknown keys are errors)."""
    return base.parse_diffusion_sections(
        config, {"data": SRDataConfig, "objective": ObjectiveConfig, "latents": SRLatentsConfig}
    )


class SRStage(base.DiffusionStage):
    """LDM-SR (or the regression baseline) as a stage of the engine; EMA of the U-Net."""

    name = STAGE

    @property
    def objective(self) -> str:
        return self.parsed["objective"].kind

    def loss(self, optimizer, batch, step, scratch):
        ldm = self.ldm
        with torch.no_grad():
            z0 = ldm.encode(batch["image"])  # z_0 = s E(x)
        condition = concat_condition(batch["low"], tuple(z0.shape[-2:]))
        if self.objective == "regression":
            # L = || z_0 - f_theta([0 ; y], 0) ||^2
            loss = F.mse_loss(regression_predict(ldm, batch["low"], tuple(z0.shape[-2:])), z0)
            return loss, {"loss": float(loss.detach())}
        draws = self.draws(z0, step, scratch)
        return self.diffusion_loss(z0, draws, concat=condition)

    @torch.no_grad()
    def sample_images(self, batch):
        images, low = batch["image"][:6], batch["low"][:6]
        upscaled = super_resolve(self.ldm, low, self.objective, steps=20, seed=0)
        bicubic = F.interpolate(low, size=images.shape[-2:], mode="bicubic").clamp(-1, 1)
        return torch.cat([bicubic, upscaled, images])

    def own_config(self) -> dict[str, Any]:
        return {"objective": self.parsed["objective"].to_dict()}


def make_stage(config: dict[str, Any], device: str = "cpu"):
    """Build (stage, training crops, engine config) from a full SR config dict."""
    from ldm_mini.data import load_dataset

    parsed = parse_config(config)
    data: SRDataConfig = parsed["data"]
    source = load_dataset(data.dataset, split=data.split, **(data.options or {}))
    crops = SRCrops(
        source,
        data.crop_size,
        make_degradation(data.degradation, data.factor),
        length=data.crops_per_epoch,
        hflip=data.hflip,
        seed=parsed["train"].seed,
        jitter_colours=data.jitter_colours,
        rescale=data.rescale,
        rotate90=data.rotate90,
    )
    first_stage, first_stage_config = load_first_stage(parsed["first_stage"].checkpoint, 3)
    channels = first_stage.config.latent_channels if first_stage_config else 3
    model_values = dict(parsed["model"])
    model_values.update(
        in_channels=channels, out_channels=channels, concat_channels=3,
        num_classes=None, context_dim=None,
    )  # fmt: skip
    torch.manual_seed(parsed["train"].seed)
    unet = UNet(UNetConfig.from_dict(model_values))
    init: base.DiffusionInitConfig = parsed["init"]
    warm = None
    if init.checkpoint is not None:
        warm = base.warm_start(unet, init, first_stage, STAGE)
        theirs = warm.config["objective"]["kind"]
        if theirs != parsed["objective"].kind:
            raise ValueError(
                f"init.checkpoint {init.checkpoint} was trained with objective {theirs!r}, this "
                f"run is {parsed['objective'].kind!r}"
            )
    scale = base.scale_factor_of(parsed["latents"].scale_factor, warm, init)
    first_stage = first_stage.to(device)
    if scale is None:
        if first_stage_config is None:
            scale = 1.0  # pixels in [-1, 1] (pixel-space SR)
        else:
            sample = torch.utils.data.Subset(crops, range(min(len(crops), 512)))
            loader = torch.utils.data.DataLoader(sample, batch_size=128)
            scale = estimate_scale_factor(first_stage, (b["image"] for b in loader), device)[
                "scale_factor"
            ]
    ldm = LatentDiffusion(first_stage, unet, parsed["diffusion"].build(), scale).to(device)
    return SRStage(ldm, parsed, first_stage_config), crops, parsed["train"]


def train_sr(
    config: dict[str, Any], out: str | Path, resume: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Train (or resume) a super-resolution run into ``out``; returns the last logged values."""
    return base.train_stage(make_stage, config, out, resume, progress)
