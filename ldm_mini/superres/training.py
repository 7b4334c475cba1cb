"""Training LDM-SR / LDM-BSR, and the regression baseline, with the course's one engine.

Taught in notebook 08_super_resolution. A run trains the U-Net on random crops of a dataset
(``photos`` by default): the crop x is encoded, z_0 = s E(x), and its degraded version y
(bicubic or blind, :mod:`.degradations`) is concatenated to z_t. Two objectives share the
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
from torch import Tensor, nn

from ldm_mini.checkpoints import CheckpointError, load_checkpoint
from ldm_mini.ldm import IdentityFirstStage, LatentDiffusion, estimate_scale_factor
from ldm_mini.ldm_training import (
    DiffusionConfig,
    InitConfig,
    LDMOptimConfig,
    _Section,
    build_first_stage,
    export_ema_checkpoint,
    first_stage_record,
    global_draws,
    load_first_stage_of,
    parse_shared_sections,
)
from ldm_mini.samplers import check_eta, ddim_timesteps, start_timesteps
from ldm_mini.superres.concat import concat_condition
from ldm_mini.superres.data import SRCrops, check_rescale
from ldm_mini.superres.degradations import DEGRADATIONS, make_degradation
from ldm_mini.train import TrainConfig, Trainer, TrainingStage, config_from_dict
from ldm_mini.unet import UNet, UNetConfig

STAGE = "sr"
OBJECTIVES = ("diffusion", "regression")
# predict and refine: LDM-SR starts from the regression's prediction noised to this step (of
# 1000); chosen on 600 crops of the training photos (photos_ldm_sr's card has the sweep)
REFINE_T = 60
SECTIONS = ("description", "data", "first_stage", "model", "objective", "diffusion", "latents",
            "optim", "train", "init")  # fmt: skip


@dataclass
class SRDataConfig(_Section):
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
class ObjectiveConfig(_Section):
    """``diffusion`` (LDM-SR) or ``regression`` (the baseline: the same U-Net, one pass)."""

    kind: str = "diffusion"

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"objective.kind must be one of {OBJECTIVES}, got {self.kind!r}")


@dataclass
class SRLatentsConfig(_Section):
    """The latent scale factor s (None: 1 / std of the latents of 512 training crops)."""

    scale_factor: float | None = None


def load_sr_preset(name: str) -> dict[str, Any]:
    """The SR preset ``configs/sr/NAME.json`` with its U-Net from ``configs/unet/NAME.json``."""
    from ldm_mini.configs import load_preset

    config = load_preset("sr", name)
    config["model"] = {**load_preset("unet", name)["model"], **config.get("model", {})}
    return config


def parse_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a full SR config dict into its dataclasses (unknown keys are errors)."""
    return {
        **parse_shared_sections(config, SECTIONS),
        "data": config_from_dict(SRDataConfig, config.get("data", {}), "data"),
        "objective": config_from_dict(ObjectiveConfig, config.get("objective", {}), "objective"),
        "latents": config_from_dict(SRLatentsConfig, config.get("latents", {}), "latents"),
        "init": config_from_dict(InitConfig, config.get("init") or {}, "init"),
    }


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


class SRStage(TrainingStage):
    """LDM-SR (or the regression baseline) as a stage of the engine; EMA of the U-Net."""

    name = STAGE

    def __init__(self, ldm: LatentDiffusion, parsed: dict[str, Any], first_stage_config) -> None:
        self.ldm = ldm
        self.parsed = parsed
        self.first_stage_config = first_stage_config
        optim: LDMOptimConfig = parsed["optim"]
        self._optimizers = {
            "unet": torch.optim.AdamW(
                ldm.unet.parameters(),
                optim.lr,
                betas=tuple(optim.betas),
                weight_decay=optim.weight_decay,
            )
        }

    @property
    def objective(self) -> str:
        return self.parsed["objective"].kind

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.ldm.unet}

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"first_stage": self.ldm.first_stage, "ldm": self.ldm}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def ema_module(self) -> nn.Module:
        return self.ldm.unet

    def loss(self, optimizer, batch, step, scratch):
        ldm = self.ldm
        with torch.no_grad():
            z0 = ldm.encode(batch["image"])  # z_0 = s E(x)
        condition = concat_condition(batch["low"], tuple(z0.shape[-2:]))
        if self.objective == "regression":
            # L = || z_0 - f_theta([0 ; y], 0) ||^2
            loss = F.mse_loss(regression_predict(ldm, batch["low"], tuple(z0.shape[-2:])), z0)
            return loss, {"loss": float(loss.detach())}
        draws = global_draws(
            self.parsed["train"].seed, step, z0, scratch, ldm.schedule, self.parsed["diffusion"]
        )
        loss = ldm.training_loss(
            z0,
            t=draws.t[draws.part].to(z0.device),
            noise=draws.noise[draws.part].to(z0.device),
            concat=condition,
            weighting=self.parsed["diffusion"].weighting,
            min_snr_gamma=self.parsed["diffusion"].min_snr_gamma,
        )
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def sample_images(self, batch):
        images, low = batch["image"][:6], batch["low"][:6]
        upscaled = super_resolve(self.ldm, low, self.objective, steps=20, seed=0)
        bicubic = F.interpolate(low, size=images.shape[-2:], mode="bicubic").clamp(-1, 1)
        return torch.cat([bicubic, upscaled, images])

    def checkpoint_config(self) -> dict[str, Any]:
        parsed = self.parsed
        return {
            "model": self.ldm.unet.config.to_dict(),
            "data": parsed["data"].to_dict(),
            "first_stage": first_stage_record(
                parsed["first_stage"], self.first_stage_config, self.ldm
            ),
            "objective": parsed["objective"].to_dict(),
            "diffusion": parsed["diffusion"].to_dict(),
            "latents": parsed["latents"].to_dict(),
            "scale_factor": float(self.ldm.scale_factor),
            "optim": parsed["optim"].to_dict(),
            "init": parsed["init"].to_dict(),
        }

    def inference_state(self) -> dict[str, Tensor]:
        return {f"unet.{k}": v for k, v in self.ldm.unet.state_dict().items()} | {
            f"first_stage.{k}": v for k, v in self.ldm.first_stage.state_dict().items()
        }


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
    first_stage, first_stage_config = build_first_stage(parsed["first_stage"].checkpoint, 3)
    channels = first_stage.config.latent_channels if first_stage_config else 3
    model_values = dict(parsed["model"])
    model_values.update(
        in_channels=channels, out_channels=channels, concat_channels=3,
        num_classes=None, context_dim=None,
    )  # fmt: skip
    torch.manual_seed(parsed["train"].seed)
    unet = UNet(UNetConfig.from_dict(model_values))
    scale = parsed["latents"].scale_factor
    if parsed["init"].checkpoint is not None:
        init_scale = warm_start_sr(unet, parsed["init"], first_stage, parsed["objective"].kind)
        if scale is not None and abs(scale - init_scale) > 1e-6 * init_scale:
            raise ValueError(
                f"latents.scale_factor={scale} but the warm-start checkpoint "
                f"{parsed['init'].checkpoint} was trained with {init_scale}; leave it null"
            )
        scale = init_scale
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


def warm_start_sr(unet: UNet, init: InitConfig, first_stage: nn.Module, objective: str) -> float:
    """Load ``init.checkpoint``'s U-Net weights into ``unet``; returns its latent scale factor.

    Refuses a checkpoint with another U-Net config, another objective, or other latents
    (a first stage whose encoder differs: a decoder-only fine-tune keeps them).
    """
    from ldm_mini.first_stage import latent_parts_sha256

    start, start_config = load_sr(init.checkpoint, use_ema=init.weights == "ema")
    if start_config["model"] != unet.config.to_dict():
        raise ValueError(
            f"init.checkpoint {init.checkpoint} has another U-Net (model section) than this "
            "run; warm starts need the same architecture"
        )
    if start_config["objective"]["kind"] != objective:
        raise ValueError(
            f"init.checkpoint {init.checkpoint} was trained with objective "
            f"{start_config['objective']['kind']!r}, this run is {objective!r}"
        )
    same_kind = isinstance(start.first_stage, IdentityFirstStage) == isinstance(
        first_stage, IdentityFirstStage
    )
    if not same_kind or latent_parts_sha256(start.first_stage) != latent_parts_sha256(first_stage):
        raise ValueError(
            f"init.checkpoint {init.checkpoint} was trained on other latents (its first stage's "
            "encoder differs from this run's); start from random weights instead"
        )
    unet.load_state_dict(start.unet.state_dict())
    return float(start_config["scale_factor"])


def train_sr(
    config: dict[str, Any], out: str | Path, resume: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Train (or resume) a super-resolution run into ``out``; returns the last logged values."""
    from ldm_mini.environment import pick_device

    train = TrainConfig.from_dict(config.get("train", {}))
    device = pick_device(None if train.device == "auto" else train.device)
    stage, dataset, train_config = make_stage(config, device)
    trainer = Trainer(stage, dataset, train_config, out, resume=resume, progress=progress)
    return trainer.fit()


def export_sr(source: str | Path, destination: str | Path, extra: dict[str, Any]) -> Path:
    """Write a shipped SR checkpoint: the EMA U-Net as its weights, no trainer state, and the
    first stage by reference (checked by sha256 when loaded) when it is a shipped autoencoder.
    ``extra`` (command, metrics, ...) is added to its config."""
    return export_ema_checkpoint(source, destination, extra, STAGE)


def load_sr(path: str | Path, device: str = "cpu", use_ema: bool = True):
    """Load a super-resolution checkpoint; returns ``(ldm, config)`` (EMA U-Net by default)."""
    checkpoint = load_checkpoint(path, expected_stage=STAGE)
    config = checkpoint.config
    state = checkpoint.model_state
    first_stage = load_first_stage_of(config, state, path)
    unet = UNet(UNetConfig.from_dict(config["model"]))
    if use_ema and checkpoint.ema_state is not None:
        weights = {k: v for k, v in checkpoint.ema_state.items() if not k.startswith("__")}
    else:
        weights = {k[5:]: v for k, v in state.items() if k.startswith("unet.")}
    try:
        unet.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"the U-Net weights in {path} do not fit its config: {err}") from err
    schedule = config_from_dict(DiffusionConfig, config["diffusion"], "diffusion").build()
    ldm = LatentDiffusion(first_stage, unet, schedule, float(config["scale_factor"]))
    return ldm.to(device).eval(), config


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
    :func:`load_sr`). Predict and refine (Whang et al. 2022): its prediction z_reg is noised
    to the first DDIM step t_0 <= ``refine_t`` and LDM-SR runs the remaining steps from there,
    x_t0 = sqrt(abar_t0) z_reg + sqrt(1 - abar_t0) T eps, instead of from pure noise at t = T-1.
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
    )
    return back_project(images, low, factor, back_projection)


def check_refiner(
    ldm: LatentDiffusion, refine_from: LatentDiffusion, objective: str, sampler: str
) -> None:
    """Refuse a refinement start that cannot work: LDM-SR with DDIM, the same latents."""
    from ldm_mini.first_stage import latent_parts_sha256

    if objective != "diffusion" or sampler != "ddim":
        raise ValueError(
            "refine_from starts LDM-SR's DDIM sampler from a regression's prediction; it needs "
            f"the diffusion objective and sampler 'ddim', got {objective!r} and {sampler!r}"
        )
    if ldm.latent_channels != refine_from.latent_channels or latent_parts_sha256(
        ldm.first_stage
    ) != latent_parts_sha256(refine_from.first_stage):
        raise ValueError(
            "refine_from was trained on other latents than this LDM-SR (their first stages' "
            "encoders differ); give a regression checkpoint on the same first stage"
        )
