"""The stage recipe: what every trained stage shares, written once.

A stage (the autoencoder, the LDM, super-resolution, ...) is trained from one config dict by
the one engine (:mod:`ldm_mini.train`). Every stage follows the same recipe:

1. **parse** its config: known sections only, each a strict dataclass
   (:func:`parse_sections`; the diffusion stages share ``first_stage``, ``model``,
   ``diffusion``, ``optim``, ``train`` and ``init``: :func:`parse_diffusion_sections`);
2. **make** the stage: the model, its frozen first stage, the dataset (the stage's own
   ``make_stage``), optionally **warm-started** from an earlier checkpoint of the same stage on
   the same latents (:func:`warm_start`);
3. **train** it with the engine into a run folder that resumes (:func:`train_stage`).

Loading a trained stage and sampling from it are not here: :mod:`ldm_mini.pipelines` does
that without any training code. Taught in notebook 06_latent_diffusion (section 4).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldm_mini.checkpoints import load_checkpoint
from ldm_mini.configs import Section, check_keys, config_from_dict
from ldm_mini.diffusion import DiffusionConfig, NoiseSchedule
from ldm_mini.distributed import local_positions
from ldm_mini.ldm import FirstStageConfig, LatentDiffusion, same_latents
from ldm_mini.train import TrainConfig, Trainer, TrainingStage
from ldm_mini.unet import UNet, UNetConfig

log = logging.getLogger("ldm_mini.stages")


# --------------------------------------------------------------------------------------
# 1. Parsing a config
# --------------------------------------------------------------------------------------


@dataclass
class DiffusionInitConfig(Section):
    """Optional warm start of a diffusion stage: the U-Net weights of an earlier checkpoint.

    ``checkpoint``: a checkpoint or run folder of the same stage, or ``shipped:NAME`` (None:
    random initialisation); ``weights``: "ema" (its EMA, what it samples with) or "raw". The
    optimizer, step count and EMA start fresh; the U-Net config and the latents must match
    (see :func:`warm_start`).
    """

    checkpoint: str | None = None
    weights: str = "ema"

    def __post_init__(self) -> None:
        if self.weights not in ("ema", "raw"):
            raise ValueError(f"init.weights must be 'ema' or 'raw', got {self.weights!r}")


@dataclass
class DiffusionOptimConfig(Section):
    """AdamW for the U-Net (and a jointly trained tau_theta)."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


def parse_sections(
    config: dict[str, Any], sections: Mapping[str, type | Callable | None]
) -> dict[str, Any]:
    """Parse ``config`` section by section: ``sections`` maps every allowed section to its
    dataclass (built strictly by :func:`~ldm_mini.configs.config_from_dict`), to a function of
    the section's dict, or to None (kept as it is, e.g. ``description``). Unknown sections are
    errors that list the allowed ones."""
    unknown = sorted(set(config) - set(sections))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; sections: {list(sections)}")
    parsed: dict[str, Any] = {}
    for name, parser in sections.items():
        values = config.get(name) or {}
        if parser is None:
            continue
        if dataclasses.is_dataclass(parser):
            parsed[name] = config_from_dict(parser, values, name)
        else:
            parsed[name] = parser(values)
    return parsed


def _unet_keys(values: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` section of a diffusion stage: U-Net keys, checked (the stage fills in the
    channels and the conditioning before building the U-Net)."""
    check_keys(UNetConfig, values, "model (U-Net)")
    return dict(values)


# the sections every diffusion stage has, and how each is parsed
DIFFUSION_SECTIONS: dict[str, type | Callable | None] = {
    "description": None,
    "first_stage": FirstStageConfig,
    "model": _unet_keys,
    "diffusion": DiffusionConfig,
    "init": DiffusionInitConfig,
    "optim": DiffusionOptimConfig,
    "train": TrainConfig.from_dict,
}


def parse_diffusion_sections(
    config: dict[str, Any], own: Mapping[str, type | Callable]
) -> dict[str, Any]:
    """A diffusion stage's config: the shared :data:`DIFFUSION_SECTIONS` and its ``own``."""
    return parse_sections(config, {**DIFFUSION_SECTIONS, **own})


# --------------------------------------------------------------------------------------
# 2. Making a diffusion stage
# --------------------------------------------------------------------------------------


def first_stage_record(
    first_stage: FirstStageConfig, autoencoder_config: dict[str, Any] | None, ldm: LatentDiffusion
) -> dict[str, Any]:
    """The ``first_stage`` entry of a checkpoint's config: the source, the autoencoder's own
    config and the sha256 of its weights (a shipped model may omit them and load them from the
    autoencoder folder, which must then hold exactly these), f and the latent channels."""
    return {
        **first_stage.to_dict(),
        "autoencoder": autoencoder_config,
        "model_sha256": None
        if autoencoder_config is None
        else autoencoder_config["files"]["model.safetensors"],
        "downsampling_factor": ldm.downsampling_factor,
        "latent_channels": ldm.latent_channels,
    }


@dataclass
class WarmStart:
    """What :func:`warm_start` loaded: the checkpoint's config, its trained weights (``unet.*``
    and, for a jointly trained text encoder, ``condition_encoder.*``) and its scale factor s."""

    config: dict[str, Any]
    weights: dict[str, Tensor]
    scale_factor: float


def warm_start(unet: UNet, init: DiffusionInitConfig, first_stage: nn.Module, stage: str):
    """Load ``init.checkpoint``'s U-Net weights (of stage ``stage``) into ``unet``.

    Refuses (ValueError) a checkpoint whose U-Net config differs from this run's, or that was
    trained on other latents than ``first_stage`` makes (:func:`~ldm_mini.ldm.same_latents`:
    the same autoencoder, or a decoder-only fine-tune of it): its weights would then mean
    something else. The stage checks what else must match (objective, text encoder) on the
    returned :class:`WarmStart`.
    """
    from ldm_mini.pipelines.load import first_stage_of, trained_weights, with_prefix

    source = load_checkpoint(init.checkpoint, expected_stage=stage)
    theirs = UNetConfig.from_dict(source.config["model"]).to_dict()
    ours = unet.config.to_dict()
    different = sorted(k for k in ours if ours[k] != theirs.get(k))
    if different:
        raise ValueError(
            f"init.checkpoint {init.checkpoint} has another U-Net: "
            + ", ".join(f"{k} {theirs.get(k)!r} there vs {ours[k]!r} here" for k in different)
        )
    their_first_stage = first_stage_of(source.config, source.model_state, init.checkpoint)
    if not same_latents(first_stage, their_first_stage):
        raise ValueError(
            f"init.checkpoint {init.checkpoint} was trained on other latents (another first "
            f"stage: {source.config['first_stage']['checkpoint']}); warm starts need the same "
            "latents: start from random weights instead"
        )
    only_ema = source.config.get("shipped_weights") == "ema"  # a shipped model: EMA as weights
    if init.weights == "ema" and source.ema_state is None and not only_ema:
        raise ValueError(
            f"init.checkpoint {init.checkpoint} has no EMA weights; set init.weights=raw"
        )
    if init.weights == "raw" and only_ema:
        raise ValueError(
            f"init.checkpoint {init.checkpoint} ships only its EMA weights; set init.weights=ema"
        )
    weights = trained_weights(source, use_ema=init.weights == "ema")
    unet.load_state_dict(with_prefix(weights, "unet."))
    log.info("U-Net initialised from %s (%s weights, step %d)",
             init.checkpoint, init.weights, source.step)  # fmt: skip
    return WarmStart(source.config, weights, float(source.config["scale_factor"]))


def scale_factor_of(
    configured: float | None, start: WarmStart | None, init: DiffusionInitConfig
) -> float | None:
    """The latent scale factor s of a run: a warm start's own s (its U-Net learned latents
    scaled by exactly that; a different configured one is refused), else the configured one
    (None: the stage estimates it as 1 / std of the training latents)."""
    if start is None:
        return configured
    if configured is not None and abs(configured - start.scale_factor) > 1e-6 * start.scale_factor:
        raise ValueError(
            f"latents.scale_factor={configured} but the warm-start checkpoint {init.checkpoint} "
            f"was trained with {start.scale_factor}; leave latents.scale_factor null."
        )
    return start.scale_factor


def estimated_scale_factor(
    scale: float | None,
    first_stage_config: dict[str, Any] | None,
    first_stage: nn.Module,
    images,
    cache: Tensor | None,
    device: str,
) -> float:
    """The run's latent scale factor s: ``scale`` when known (configured or a warm start's),
    1 in pixel space, else 1 / std of the training latents (the cached ones, or those of the
    first 2,000 images)."""
    from ldm_mini.ldm import IdentityFirstStage, estimate_scale_factor

    if scale is not None:
        return scale
    if first_stage_config is None:
        return 1.0  # pixels in [-1, 1] are used as they are (LDM-1)
    if cache is not None:
        stats = estimate_scale_factor(IdentityFirstStage(cache.shape[1]), [cache])
    else:
        subset = torch.utils.data.Subset(images, range(min(len(images), 2000)))
        loader = torch.utils.data.DataLoader(subset, batch_size=500)
        stats = estimate_scale_factor(first_stage, (b["image"] for b in loader), device)
    return stats["scale_factor"]


# --------------------------------------------------------------------------------------
# The diffusion stages as stages of the engine
# --------------------------------------------------------------------------------------


@dataclass
class GlobalDraws:
    """The random draws of one training step for the whole global batch, and this process's
    positions ``part`` in it; ``generator`` continues the same stream (e.g. condition dropout)."""

    t: Tensor
    noise: Tensor
    part: slice
    generator: torch.Generator


def global_draws(
    seed: int,
    step: int,
    z0: Tensor,
    scratch: dict[str, Any],
    schedule: NoiseSchedule,
    diffusion: DiffusionConfig | None = None,
) -> GlobalDraws:
    """t and eps for the global batch from a generator fixed by (seed, step): each of N
    processes takes its slice, so N processes train exactly like one (and a resumed run like
    an uninterrupted one). t follows ``diffusion.timesteps`` (uniform by default)."""
    rank, world = scratch.get("rank", 0), scratch.get("world_size", 1)
    local = z0.shape[0]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    diffusion = diffusion or DiffusionConfig()
    t = schedule.sample_timesteps(
        local * world,
        generator,
        diffusion.timesteps,
        diffusion.log_sigma_mean,
        diffusion.log_sigma_std,
    )
    noise = torch.randn((local * world, *z0.shape[1:]), generator=generator)
    # process r holds positions r, r + W, ... of the global batch (ldm_mini.distributed)
    return GlobalDraws(t, noise, local_positions(rank, world), generator)


class DiffusionStage(TrainingStage):
    """A diffusion model on a frozen first stage as a stage of the engine: AdamW on the trained
    modules (:meth:`modules`: the U-Net, and tau_theta when trained jointly), an EMA of them,
    the first stage frozen. Subclasses give :meth:`loss`, :meth:`sample_images` and the
    sections of their own in :meth:`own_config`."""

    def __init__(self, ldm: LatentDiffusion, parsed: dict[str, Any], first_stage_config) -> None:
        self.ldm = ldm
        self.parsed = parsed
        self.first_stage_config = first_stage_config
        optim: DiffusionOptimConfig = parsed["optim"]
        parameters = [p for module in self.modules().values() for p in module.parameters()]
        self._optimizers = {
            "unet": torch.optim.AdamW(
                parameters, optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
            )
        }

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.ldm.unet}

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"first_stage": self.ldm.first_stage, "ldm": self.ldm}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def ema_module(self) -> nn.Module:
        return self.ldm.unet

    def draws(self, z0: Tensor, step: int, scratch: dict[str, Any]) -> GlobalDraws:
        """This step's t and eps (:func:`global_draws`)."""
        parsed = self.parsed
        return global_draws(parsed["train"].seed, step, z0, scratch, self.ldm.schedule,
                            parsed["diffusion"])  # fmt: skip

    def diffusion_loss(self, z0: Tensor, draws: GlobalDraws, **condition) -> tuple[Tensor, dict]:
        """L_LDM on this process's slice of the step's draws (t, eps), with the config's loss
        weighting; ``condition``: the labels, captions or concatenated input of the stage
        (:meth:`ldm_mini.ldm.LatentDiffusion.training_loss`)."""
        diffusion: DiffusionConfig = self.parsed["diffusion"]
        loss = self.ldm.training_loss(
            z0,
            t=draws.t[draws.part].to(z0.device),
            noise=draws.noise[draws.part].to(z0.device),
            weighting=diffusion.weighting,
            min_snr_gamma=diffusion.min_snr_gamma,
            **condition,
        )
        return loss, {"loss": float(loss.detach())}

    def own_config(self) -> dict[str, Any]:
        """The stage's own sections for config.json (besides the shared ones)."""
        return {}

    def checkpoint_config(self) -> dict[str, Any]:
        parsed = self.parsed
        first_stage = first_stage_record(parsed["first_stage"], self.first_stage_config, self.ldm)
        return {
            "model": self.ldm.unet.config.to_dict(),
            "data": parsed["data"].to_dict(),
            "first_stage": first_stage,
            "diffusion": parsed["diffusion"].to_dict(),
            **self.own_config(),
            "latents": parsed["latents"].to_dict(),
            "init": parsed["init"].to_dict(),
            "scale_factor": float(self.ldm.scale_factor),
            "optim": parsed["optim"].to_dict(),
        }

    def inference_state(self) -> dict[str, Tensor]:
        state = {}
        for name, module in {**self.modules(), "first_stage": self.ldm.first_stage}.items():
            state |= {f"{name}.{k}": v for k, v in module.state_dict().items()}
        return state


# --------------------------------------------------------------------------------------
# 3. Training
# --------------------------------------------------------------------------------------


def train_stage(
    make_stage: Callable, config: dict[str, Any], out: str | Path, resume: bool, progress: bool
) -> dict[str, Any]:
    """Train (or resume) the stage ``make_stage(config, device)`` builds into ``out`` with the
    engine, on ``train.device`` (``auto``: a GPU when there is one); returns the last logged
    values."""
    from ldm_mini.environment import pick_device

    train = TrainConfig.from_dict(config.get("train", {}))
    device = pick_device(None if train.device == "auto" else train.device)
    stage, dataset, train_config = make_stage(config, device)
    trainer = Trainer(stage, dataset, train_config, out, resume=resume, progress=progress)
    return trainer.fit()
