"""The first stage's recipe: training the perceptual autoencoder (KL or VQ).

Puts together :mod:`ldm_mini.autoencoder` (the model), :mod:`ldm_mini.losses` (L1 +
perceptual + patch-GAN + KL/VQ terms) and the one training engine :mod:`ldm_mini.train`, by
the recipe of :mod:`.base`. ``ldm-mini train-autoencoder`` calls into here. Taught in notebooks
01_perceptual_autoencoder and 02_vector_quantization; :func:`ldm_mini.pipelines.load_autoencoder`
loads the result and :func:`ldm_mini.evaluation.evaluate_autoencoder` measures it.

A run can start from a trained autoencoder (``init.checkpoint``) and train only its decoder
(``init.trainable = "decoder"``): the parts that compute the latent stay frozen, so every
latent, and every diffusion model trained on them, stays valid while the reconstructions get
better (Stable Diffusion's "ft-MSE" decoder was made this way; notebook 08 uses it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldm_mini.autoencoder import (
    LATENT_PARTS,
    AutoencoderConfig,
    build_autoencoder,
    latent_parts_sha256,
    latent_shape,
)
from ldm_mini.checkpoints import load_checkpoint, weights_sha256s
from ldm_mini.configs import Section
from ldm_mini.data.config import DataConfig, build_dataset
from ldm_mini.distributed import gather_global_batch, local_positions
from ldm_mini.losses import AutoencoderLoss, AutoencoderLossConfig
from ldm_mini.stages.base import parse_sections, train_stage
from ldm_mini.train import TrainConfig, TrainingStage

STAGE = "autoencoder"
log = logging.getLogger("ldm_mini.stages.autoencoder")
TRAINABLE = ("all", "decoder")


@dataclass
class OptimConfig(Section):
    """Adam settings for the generator (autoencoder) and the discriminator."""

    lr: float = 2e-4
    disc_lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    vq_reseed_every: int = 200  # VQ: re-seed codes unused since the last re-seed (0: never)


@dataclass
class InitConfig(Section):
    """Where the weights start: random (``checkpoint`` None) or a trained autoencoder.

    ``checkpoint``: a checkpoint or run folder, or ``shipped:NAME``; its architecture replaces
    the ``model`` section. ``trainable``: ``all``, or ``decoder`` to freeze the parts that
    compute the latent (:data:`LATENT_PARTS`), which keeps every latent bit for bit.
    """

    checkpoint: str | None = None
    trainable: str = "all"

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE:
            raise ValueError(f"init.trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if self.trainable == "decoder" and self.checkpoint is None:
            raise ValueError(
                "init.trainable='decoder' needs init.checkpoint (a trained autoencoder whose "
                "encoder to keep); a random encoder would make random latents"
            )


def freeze_latent_parts(model: torch.nn.Module) -> list[str]:
    """Stop gradients into the modules that compute the latent; returns their names."""
    frozen = []
    for name, module in model.named_children():
        if name in LATENT_PARTS:
            module.requires_grad_(False)
            frozen.append(name)
    return frozen


def parse_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a full autoencoder config dict into its dataclasses."""
    return parse_sections(
        config,
        {
            "description": None,
            "data": DataConfig,
            "model": dict,  # checked by AutoencoderConfig once the channels are known
            "loss": AutoencoderLossConfig.from_dict,
            "optim": OptimConfig,
            "train": TrainConfig.from_dict,
            "init": InitConfig,
        },
    )


class AutoencoderStage(TrainingStage):
    """The autoencoder as a stage of the training engine: two optimizers, G then D."""

    name = STAGE

    def __init__(
        self,
        model_config: AutoencoderConfig,
        loss_config: AutoencoderLossConfig,
        optim: OptimConfig,
        data: DataConfig,
        init: InitConfig | None = None,
    ) -> None:
        self.model_config, self.loss_config, self.optim, self.data = (
            model_config,
            loss_config,
            optim,
            data,
        )
        self.init = init or InitConfig()
        self.model = build_autoencoder(model_config)
        self.init_record: dict[str, Any] = self.init.to_dict()
        if self.init.checkpoint is not None:
            self.init_record.update(self._load_init_weights(self.init.checkpoint))
        self.frozen = freeze_latent_parts(self.model) if self.init.trainable == "decoder" else []
        self.loss_fn = AutoencoderLoss(loss_config, model_config.in_channels, model_config.kind)
        log.info(
            "perceptual backbone: %s (loss.perceptual_backbone=%s, loss.allow_download=%s)",
            self.loss_fn.perceptual_backbone_name,
            loss_config.perceptual_backbone,
            loss_config.allow_download,
        )
        betas = tuple(optim.betas)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._optimizers = {
            "generator": torch.optim.Adam(
                trainable, optim.lr, betas=betas, weight_decay=optim.weight_decay
            ),
            "discriminator": torch.optim.Adam(
                self.loss_fn.discriminator.parameters(), optim.disc_lr, betas=betas
            ),
        }

    def _load_init_weights(self, source: str) -> dict[str, Any]:
        checkpoint = load_checkpoint(source, expected_stage=STAGE)
        if checkpoint.config["model"] != self.model_config.to_dict():
            raise ValueError(
                f"init.checkpoint {source} has another architecture than this run's model "
                "section; build the model from the checkpoint's config (make_stage does)"
            )
        self.model.load_state_dict(checkpoint.model_state)
        return {  # what the start is known by: diffusion checkpoints refer to it by these
            "model_sha256s": sorted(weights_sha256s(checkpoint.config)),
            "latent_parts_sha256": latent_parts_sha256(self.model),
        }

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, "discriminator": self.loss_fn.discriminator}

    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        perceptual = self.loss_fn.perceptual
        return {} if perceptual is None else {"perceptual": perceptual}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def active_optimizers(self, step: int) -> list[str]:
        # the discriminator trains only once the adversarial term is on
        if step >= self.loss_config.disc_start:
            return ["generator", "discriminator"]
        return ["generator"]

    def loss(self, optimizer, batch, step, scratch):
        images = batch["image"]
        if optimizer == "generator":
            for name in self.frozen:  # frozen parts compute the latent as at inference
                getattr(self.model, name).eval()
            output = self.model(images, noise=self._posterior_noise(images, scratch))
            scratch["reconstruction"] = output.reconstruction
            loss, logged = self.loss_fn.generator_loss(
                images, output.reconstruction, output.regularization, step, self.model.last_layer
            )
            for key, value in output.stats.items():
                logged[key] = float(value)
            return loss, logged
        return self.loss_fn.discriminator_loss(images, scratch["reconstruction"], step)

    def _posterior_noise(self, images: torch.Tensor, scratch: dict[str, Any]) -> Tensor | None:
        """None on one process (the model draws eps itself). On W processes: eps for the whole
        global batch, drawn alike on every process (as one process would draw it), at this
        process's positions; so W processes train like one."""
        rank, world = scratch.get("rank", 0), scratch.get("world_size", 1)
        if world == 1 or self.model_config.kind != "kl":
            return None
        shape = latent_shape(self.model_config, images.shape[-1])
        noise = torch.randn((images.shape[0] * world, *shape), device=images.device)
        return noise[local_positions(rank, world)]

    @torch.no_grad()
    def after_step(self, batch, step, scratch) -> None:
        every = self.optim.vq_reseed_every
        if self.model_config.kind == "vq" and every and step % every == 0 and not self.frozen:
            world = scratch.get("world_size", 1)
            quantizer = self.model.quantizer
            # the codes unused on every process, re-seeded alike everywhere from the global
            # batch's latents (the draws of the global RNG are the same on every process)
            latents = gather_global_batch(self.model.encode(batch["image"]), world)
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(quantizer.usage_count, op=dist.ReduceOp.SUM)
            quantizer.reseed_dead_codes(latents)

    @torch.no_grad()
    def sample_images(self, batch):
        was_training = self.model.training
        self.model.eval()
        images = batch["image"][:8]
        reconstruction = self.model(images, sample_posterior=False).reconstruction
        self.model.train(was_training)
        # top row inputs, bottom row reconstructions
        return torch.cat([images, reconstruction.clamp(-1, 1)])

    def checkpoint_config(self) -> dict[str, Any]:
        return {
            "model": self.model_config.to_dict(),
            "loss": self.loss_config.to_dict(),
            "optim": self.optim.to_dict(),
            "data": self.data.to_dict(),
            "init": self.init_record,
            "perceptual_backbone": self.loss_fn.perceptual_backbone_name,
        }

    def inference_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()


def make_stage(
    config: dict[str, Any], device: str = "cpu"
) -> tuple[AutoencoderStage, Any, TrainConfig]:
    """Build the stage, its dataset and the engine config from a full config dict (the engine
    moves the models to ``device``)."""
    parsed = parse_config(config)
    dataset = build_dataset(parsed["data"], seed=parsed["train"].seed)
    init: InitConfig = parsed["init"]
    model_values = dict(parsed["model"])
    if init.checkpoint is not None:  # the architecture is the starting checkpoint's
        start = load_checkpoint(init.checkpoint, expected_stage=STAGE)
        model_values = dict(start.config["model"])
    model_values.setdefault("in_channels", dataset.channels)
    if model_values["in_channels"] != dataset.channels:
        raise ValueError(
            f"model.in_channels={model_values['in_channels']} but the data gives "
            f"{dataset.channels}-channel images; set data.channels or model.in_channels to match"
        )
    torch.manual_seed(parsed["train"].seed)  # the same initial weights for the same seed
    model_config = AutoencoderConfig.from_dict(model_values)
    stage = AutoencoderStage(model_config, parsed["loss"], parsed["optim"], parsed["data"], init)
    return stage, dataset, parsed["train"]


def train_autoencoder(
    config: dict[str, Any], out: str | Path, resume: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Train (or resume) an autoencoder run into ``out``; returns the last logged values."""
    return train_stage(make_stage, config, out, resume, progress)
