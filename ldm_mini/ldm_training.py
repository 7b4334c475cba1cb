"""Training, loading and evaluating latent diffusion models with the one training engine.

Puts together :mod:`ldm_mini.ldm` (the model), :mod:`ldm_mini.unet`, :mod:`ldm_mini.diffusion`
and :mod:`ldm_mini.train`. ``ldm-mini train-ldm``, ``ldm-mini sample`` and
``ldm-mini evaluate ldm`` call into here. Taught in notebook 06_latent_diffusion.

A config has the sections ``data``, ``first_stage`` (``checkpoint``: an autoencoder folder,
``shipped:NAME`` for one in ``data/checkpoints``, or ``identity`` for pixel space),
``model`` (the U-Net: every :class:`~ldm_mini.unet.UNetConfig` field; channels and classes
are filled in from the first stage and the condition), ``diffusion`` (the schedule),
``condition`` (``kind`` none or class, ``drop_probability``), ``latents`` (scale factor and
caching), ``init`` (optional warm start: the U-Net weights of an earlier LDM checkpoint),
``optim`` and ``train`` (the engine). An LDM checkpoint holds the U-Net, its EMA
and the first stage's weights, so it samples on its own.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldm_mini.checkpoints import (
    CheckpointError,
    load_checkpoint,
    saved_config,
    weights_sha256s,
)
from ldm_mini.conditioning import UNKNOWN_POLICIES, TextEncoder, WordTokenizer
from ldm_mini.diffusion import TIMESTEP_DISTRIBUTIONS, WEIGHTINGS, NoiseSchedule
from ldm_mini.first_stage import DataConfig, build_dataset, load_autoencoder
from ldm_mini.ldm import IdentityFirstStage, LatentDiffusion, estimate_scale_factor
from ldm_mini.samplers import check_eta
from ldm_mini.train import TrainConfig, Trainer, TrainingStage, config_from_dict
from ldm_mini.unet import UNet, UNetConfig

STAGE = "ldm"
CONDITIONS = ("none", "class", "text")
TEXT_ENCODERS = ("trained", "minilm")
log = logging.getLogger("ldm_mini.ldm_training")


class _Section:
    """A config section (a dataclass) written to checkpoints as a plain dict."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class FirstStageConfig(_Section):
    """Which frozen first stage: a checkpoint folder, ``shipped:NAME``, or ``identity``."""

    checkpoint: str = "shipped:fashion_mnist_kl_f4"


@dataclass
class DiffusionConfig(_Section):
    """The noise schedule (see :func:`ldm_mini.diffusion.beta_schedule`)."""

    schedule: str = "scaled_linear"
    num_timesteps: int = 1000
    parameterization: str = "eps"
    # None: the plain MSE to the target (LDM Eq. 2); "min_snr": Min-SNR-gamma (Hang et al.)
    weighting: str | None = None
    min_snr_gamma: float = 5.0
    # how training draws t: "uniform", or "lognormal" in the noise level (EDM's, see
    # NoiseSchedule.sample_timesteps) with ln sigma ~ N(log_sigma_mean, log_sigma_std^2)
    timesteps: str = "uniform"
    log_sigma_mean: float = -0.5
    log_sigma_std: float = 1.2

    def __post_init__(self) -> None:
        if self.timesteps not in TIMESTEP_DISTRIBUTIONS:
            raise ValueError(
                f"diffusion.timesteps must be one of {list(TIMESTEP_DISTRIBUTIONS)}, "
                f"got {self.timesteps!r}"
            )
        if not self.log_sigma_std > 0:
            raise ValueError(f"diffusion.log_sigma_std must be > 0, got {self.log_sigma_std!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"diffusion.weighting must be one of {list(WEIGHTINGS)}, got {self.weighting!r}"
            )
        if not self.min_snr_gamma > 0:
            raise ValueError(f"diffusion.min_snr_gamma must be > 0, got {self.min_snr_gamma!r}")

    def build(self) -> NoiseSchedule:
        return NoiseSchedule.from_name(
            self.schedule, self.num_timesteps, parameterization=self.parameterization
        )


@dataclass
class ConditionConfig(_Section):
    """What the U-Net is conditioned on, and how often the condition is dropped (CFG)."""

    kind: str = "class"
    drop_probability: float = 0.1
    num_classes: int | None = None  # None: read from the dataset's labels
    # text (kind "text"): tau_theta, a word-level tokenizer + transformer trained jointly
    text_dim: int = 128
    text_depth: int = 2
    text_heads: int = 4
    max_length: int = 16  # tokens, with the start token: captions of up to 15 words
    unknown_words: str = "error"  # or "unk": words outside the vocabulary become <unk>
    # "trained": the word-level TextEncoder above, trained jointly; "minilm": a frozen
    # pretrained MiniLM (ldm_mini.pretrained_text, 384-dim tokens; text_dim/depth/heads and
    # unknown_words then do not apply), from the installed package or text_encoder_dir
    text_encoder: str = "trained"
    text_encoder_dir: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in CONDITIONS:
            raise ValueError(f"condition.kind must be one of {CONDITIONS}, got {self.kind!r}")
        if not 0.0 <= self.drop_probability <= 1.0:
            raise ValueError(f"drop_probability must be in [0, 1], got {self.drop_probability}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(
                f"condition.text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}"
            )
        if self.unknown_words not in UNKNOWN_POLICIES:
            raise ValueError(
                f"condition.unknown_words must be one of {UNKNOWN_POLICIES}, "
                f"got {self.unknown_words!r}"
            )


@dataclass
class LatentsConfig(_Section):
    """The latent scale factor and the latent cache."""

    scale_factor: float | None = None  # None: 1 / std of the encoded training latents
    cache: bool = True  # encode the training set once (exact when there is no augmentation)


@dataclass
class InitConfig(_Section):
    """Optional warm start: begin from the U-Net weights of an earlier LDM checkpoint.

    ``checkpoint``: an LDM checkpoint or run folder (None: random initialisation);
    ``weights``: "ema" (its EMA, what it samples with) or "raw". The optimizer, step count
    and EMA start fresh; the U-Net config, first stage and scale factor must match (for a text
    model with a jointly trained encoder also its settings and vocabulary: its weights load too).
    """

    checkpoint: str | None = None
    weights: str = "ema"

    def __post_init__(self) -> None:
        if self.weights not in ("ema", "raw"):
            raise ValueError(f"init.weights must be 'ema' or 'raw', got {self.weights!r}")


@dataclass
class LDMOptimConfig(_Section):
    """AdamW for the U-Net."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values


SECTIONS = (
    "description",
    "data",
    "first_stage",
    "model",
    "diffusion",
    "condition",
    "latents",
    "init",
    "optim",
    "train",
)


def load_ldm_preset(name: str) -> dict[str, Any]:
    """The LDM preset ``name``: ``configs/ldm/NAME.json`` with its U-Net from
    ``configs/unet/NAME.json`` (the ``model`` section; the LDM preset may override fields)."""
    from ldm_mini.configs import load_preset

    config = load_preset("ldm", name)
    config["model"] = {**load_preset("unet", name)["model"], **config.get("model", {})}
    return config


def parse_shared_sections(config: dict[str, Any], sections: Sequence[str]) -> dict[str, Any]:
    """The sections every diffusion stage shares (LDM, super-resolution): unknown sections are
    errors; ``first_stage``, ``model`` (U-Net keys checked), ``diffusion``, ``optim``, ``train``."""
    unknown = sorted(set(config) - set(sections))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; sections: {list(sections)}")
    optim_values = dict(config.get("optim", {}))
    if "betas" in optim_values:
        optim_values["betas"] = tuple(optim_values["betas"])
    model = dict(config.get("model", {}))
    valid = {f.name for f in dataclasses.fields(UNetConfig)}
    bad = sorted(set(model) - valid)
    if bad:
        raise ValueError(f"unknown model (U-Net) key(s) {bad}; valid: {sorted(valid)}")
    return {
        "first_stage": config_from_dict(
            FirstStageConfig, config.get("first_stage", {}), "first_stage"
        ),
        "model": model,
        "diffusion": config_from_dict(DiffusionConfig, config.get("diffusion", {}), "diffusion"),
        "optim": config_from_dict(LDMOptimConfig, optim_values, "optim"),
        "train": TrainConfig.from_dict(config.get("train", {})),
    }


def parse_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a full LDM config dict into its dataclasses (unknown keys are errors)."""
    return {
        **parse_shared_sections(config, SECTIONS),
        "data": config_from_dict(DataConfig, config.get("data", {}), "data"),
        "condition": config_from_dict(ConditionConfig, config.get("condition", {}), "condition"),
        "latents": config_from_dict(LatentsConfig, config.get("latents", {}), "latents"),
        "init": config_from_dict(InitConfig, config.get("init", {}), "init"),
    }


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


def load_first_stage_of(config: dict[str, Any], state: dict[str, Tensor], path) -> nn.Module:
    """The first stage of a diffusion checkpoint: the identity, or its autoencoder with the
    weights stored in ``state`` ("first_stage." keys) or in the referenced shipped folder."""
    from ldm_mini.autoencoder import AutoencoderConfig, build_autoencoder

    first = config["first_stage"]
    if first["checkpoint"] == "identity":
        return IdentityFirstStage(int(first["latent_channels"]))
    first_stage = build_autoencoder(AutoencoderConfig.from_dict(first["autoencoder"]["model"]))
    prefix = "first_stage."
    first_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not first_state:
        first_state = _referenced_first_stage_state(first, path)
    first_stage.load_state_dict(first_state)
    return first_stage


def resolve_first_stage_path(source: str) -> Path:
    """The folder of ``source``: a path, or ``shipped:NAME`` for ``data/checkpoints/NAME``."""
    if source.startswith("shipped:"):
        from ldm_mini.checkpoints import shipped_checkpoint_dir

        try:
            return shipped_checkpoint_dir(source.split(":", 1)[1])
        except CheckpointError as err:
            raise ValueError(str(err)) from err
    return Path(source)


def build_first_stage(source: str, channels: int) -> tuple[nn.Module, dict[str, Any] | None]:
    """(first stage module, its autoencoder config or None for the identity)."""
    if source == "identity":
        return IdentityFirstStage(channels), None
    model, config = load_autoencoder(resolve_first_stage_path(source))
    if model.config.in_channels != channels:
        raise ValueError(
            f"the autoencoder {source} takes {model.config.in_channels}-channel images but the "
            f"data has {channels} channels; pick an autoencoder trained on this kind of data."
        )
    return model, config


class LatentDataset(torch.utils.data.Dataset):
    """Cached latents s * E(x) (and labels or captions): what the U-Net trains on, encoded once."""

    def __init__(
        self, latents: Tensor, labels: Tensor | None, captions: list[str] | None = None
    ) -> None:
        self.latents, self.labels, self.captions = latents, labels, captions

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"latent": self.latents[index], "index": index}
        if self.labels is not None:
            item["label"] = self.labels[index]
        if self.captions is not None:
            item["caption"] = self.captions[index]
        return item


@torch.no_grad()
def encode_dataset(
    first_stage: nn.Module, images, batch_size: int = 500, device: str = "cpu"
) -> tuple[Tensor, Tensor | None]:
    """Encode every image of ``images`` (a TensorImageDataset) once: (latents, labels)."""
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
    latents, labels = [], []
    for batch in loader:
        latents.append(first_stage.encode_latent(batch["image"].to(device)).cpu())
        if "label" in batch:
            labels.append(batch["label"])
    return torch.cat(latents), (torch.cat(labels).long() if labels else None)


@dataclass
class GlobalDraws:
    """The random draws of one training step for the whole global batch, and this process's
    slice ``part`` of it; ``generator`` continues the same stream (e.g. condition dropout)."""

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
    return GlobalDraws(t, noise, slice(rank * local, (rank + 1) * local), generator)


class LDMStage(TrainingStage):
    """The LDM as a stage of the engine: one optimizer (AdamW on the U-Net), EMA of the U-Net."""

    name = STAGE

    def __init__(self, ldm: LatentDiffusion, parsed: dict[str, Any], first_stage_config) -> None:
        self.ldm = ldm
        self.parsed = parsed
        self.first_stage_config = first_stage_config
        optim: LDMOptimConfig = parsed["optim"]
        parameters = [p for module in self.modules().values() for p in module.parameters()]
        self._optimizers = {
            "unet": torch.optim.AdamW(
                parameters,
                optim.lr,
                betas=tuple(optim.betas),
                weight_decay=optim.weight_decay,
            )
        }
        self.generator: torch.Generator | None = None

    @property
    def trains_condition_encoder(self) -> bool:
        """True for the jointly trained TextEncoder; False without one or when it is frozen."""
        return isinstance(self.ldm.condition_encoder, TextEncoder)

    def modules(self) -> dict[str, nn.Module]:
        """The trained modules: the U-Net, and tau_theta when it is trained jointly."""
        if self.trains_condition_encoder:
            return {"unet": self.ldm.unet, "condition_encoder": self.ldm.condition_encoder}
        return {"unet": self.ldm.unet}

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"first_stage": self.ldm.first_stage, "ldm": self.ldm}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def ema_module(self) -> nn.Module:
        if self.ldm.condition_encoder is not None:
            # text: the trained modules under their names ("unet.", "condition_encoder."); a
            # frozen pretrained encoder is not averaged (nor saved: it is referenced)
            return nn.ModuleDict(self.modules())
        return self.ldm.unet

    def _latents(self, batch: dict[str, Any]) -> Tensor:
        if "latent" in batch:
            return batch["latent"]
        return self.ldm.encode(batch["image"])

    def loss(self, optimizer, batch, step, scratch):
        z0 = self._latents(batch)
        ldm = self.ldm
        labels = batch.get("label") if ldm.num_classes is not None else None
        labels = ldm.class_labels_for_training(labels, 0.0)  # validated, not yet dropped
        captions = batch.get("caption") if ldm.condition_encoder is not None else None
        captions = ldm.captions_for_training(captions, z0.shape[0], 0.0)
        # t, eps and the condition dropout are drawn for the whole global batch from a
        # generator fixed by (seed, step), and each process takes its slice: so N processes
        # train exactly like one (and a resumed run like an uninterrupted one)
        draws = global_draws(
            self.parsed["train"].seed, step, z0, scratch, ldm.schedule, self.parsed["diffusion"]
        )
        part, generator, total = draws.part, draws.generator, draws.t.shape[0]
        if labels is not None:
            p = self.parsed["condition"].drop_probability
            drop = (torch.rand(total, generator=generator) < p)[part].to(labels.device)
            labels = torch.where(drop, torch.full_like(labels, ldm.num_classes), labels)
        if captions is not None:
            p = self.parsed["condition"].drop_probability
            drop = (torch.rand(total, generator=generator) < p)[part].tolist()
            captions = ["" if d else c for c, d in zip(captions, drop, strict=True)]
        loss = ldm.training_loss(
            z0,
            labels,
            0.0,
            t=draws.t[part].to(z0.device),
            noise=draws.noise[part].to(z0.device),
            captions=captions,
            weighting=self.parsed["diffusion"].weighting,
            min_snr_gamma=self.parsed["diffusion"].min_snr_gamma,
        )
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def sample_images(self, batch):
        z0 = self._latents(batch)[:8]
        labels = None
        if self.ldm.num_classes is not None:
            labels = batch["label"][:8].to(z0.device)
        prompts = None
        if self.ldm.condition_encoder is not None:
            prompts = list(batch["caption"][:8])
        generator = torch.Generator(device=z0.device).manual_seed(0)
        images, _ = self.ldm.sample(
            z0.shape[0],
            tuple(z0.shape[-2:]),
            sampler="ddim",
            steps=20,
            labels=labels,
            prompts=prompts,
            generator=generator,
        )
        return torch.cat([self.ldm.decode(z0).clamp(-1, 1), images])

    def checkpoint_config(self) -> dict[str, Any]:
        parsed = self.parsed
        return {
            "model": self.ldm.unet.config.to_dict(),
            "data": parsed["data"].to_dict(),
            "first_stage": first_stage_record(
                parsed["first_stage"], self.first_stage_config, self.ldm
            ),
            "diffusion": parsed["diffusion"].to_dict(),
            "condition": parsed["condition"].to_dict(),
            "latents": parsed["latents"].to_dict(),
            "init": parsed["init"].to_dict(),
            "tokenizer": self._tokenizer_config(),
            "scale_factor": float(self.ldm.scale_factor),
            "optim": parsed["optim"].to_dict(),
        }

    def _tokenizer_config(self) -> dict[str, Any] | None:
        """The word vocabulary of a trained encoder, or the reference of a pretrained one."""
        encoder = self.ldm.condition_encoder
        if encoder is None:
            return None
        if isinstance(encoder, TextEncoder):
            return encoder.tokenizer.to_dict()
        return encoder.to_dict()

    def inference_state(self) -> dict[str, Tensor]:
        state = {f"unet.{k}": v for k, v in self.ldm.unet.state_dict().items()} | {
            f"first_stage.{k}": v for k, v in self.ldm.first_stage.state_dict().items()
        }
        if self.trains_condition_encoder:
            encoder = self.ldm.condition_encoder.state_dict()
            state |= {f"condition_encoder.{k}": v for k, v in encoder.items()}
        return state


def build_pretrained_text_encoder(
    condition: ConditionConfig, expected_sha256: str | None = None
) -> nn.Module:
    """The frozen MiniLM tau_theta of ``condition.text_encoder == "minilm"``."""
    from ldm_mini.pretrained_text import PretrainedTextEncoder

    return PretrainedTextEncoder(
        condition.text_encoder_dir, condition.max_length, expected_sha256=expected_sha256
    )


def build_text_encoder(condition: ConditionConfig, tokenizer: WordTokenizer) -> TextEncoder:
    """tau_theta for ``condition.kind == "text"`` with the condition's sizes."""
    return TextEncoder(
        tokenizer,
        dim=condition.text_dim,
        depth=condition.text_depth,
        heads=condition.text_heads,
        unknown=condition.unknown_words,
    )


def make_stage(config: dict[str, Any], device: str = "cpu"):
    """Build (stage, training dataset, engine config) from a full config dict."""
    parsed = parse_config(config)
    data: DataConfig = parsed["data"]
    images = build_dataset(data, seed=parsed["train"].seed)
    first_stage, first_stage_config = build_first_stage(
        parsed["first_stage"].checkpoint, images.channels
    )
    channels = first_stage.config.latent_channels if first_stage_config else images.channels
    condition: ConditionConfig = parsed["condition"]
    model_values = dict(parsed["model"])
    model_values["in_channels"] = model_values["out_channels"] = channels
    condition_encoder = None
    if condition.kind == "text":
        if "caption" not in images.dataset.column_names:
            raise ValueError(
                f"condition.kind='text' but {data.dataset} has no captions; use a captioned "
                "dataset (shapes, emoji, a folder with metadata) or condition.kind='class'/'none'."
            )
        if condition.text_encoder == "minilm":
            condition_encoder = build_pretrained_text_encoder(condition)
            model_values["context_dim"] = condition_encoder.dim
        else:
            tokenizer = WordTokenizer.from_captions(images.dataset["caption"], condition.max_length)
            model_values["context_dim"] = condition.text_dim
        model_values["num_classes"] = None
    elif condition.kind == "class":
        num_classes = condition.num_classes
        if num_classes is None:
            labels = images.dataset["label"] if "label" in images.dataset.column_names else None
            if labels is None:
                raise ValueError(
                    f"condition.kind='class' but {data.dataset} has no labels; use "
                    "condition.kind='none' (or text, notebook 07)."
                )
            num_classes = int(max(labels)) + 1
        model_values["num_classes"] = num_classes
    else:
        model_values["num_classes"] = None
    torch.manual_seed(parsed["train"].seed)
    unet = UNet(UNetConfig.from_dict(model_values))
    if condition.kind == "text" and condition_encoder is None:
        condition_encoder = build_text_encoder(condition, tokenizer)
    first_stage = first_stage.to(device)
    latents_config: LatentsConfig = parsed["latents"]
    init: InitConfig = parsed["init"]
    init_scale = None
    if init.checkpoint is not None:
        init_scale = warm_start(unet, init, first_stage_config, condition_encoder, condition)
    cache = None
    if latents_config.cache and not data.hflip:
        start = time.perf_counter()
        cache = encode_dataset(first_stage, images, device=device)
        log.info("encoded %d images in %.1f s", len(images), time.perf_counter() - start)
    scale = latents_config.scale_factor
    if init_scale is not None:
        if scale is not None and abs(scale - init_scale) > 1e-6 * init_scale:
            raise ValueError(
                f"latents.scale_factor={scale} but the warm-start checkpoint {init.checkpoint} "
                f"was trained with {init_scale}; leave latents.scale_factor null."
            )
        scale = init_scale  # the U-Net learned latents scaled by exactly this
    if scale is None and first_stage_config is None:
        scale = 1.0  # pixels in [-1, 1] are used as they are (LDM-1)
    elif scale is None:
        if cache is not None:
            stats = estimate_scale_factor(IdentityFirstStage(channels), [cache[0]])
        else:
            subset = torch.utils.data.Subset(images, range(min(len(images), 2000)))
            loader = torch.utils.data.DataLoader(subset, batch_size=500)
            stats = estimate_scale_factor(first_stage, (b["image"] for b in loader), device)
        scale = stats["scale_factor"]
    ldm = LatentDiffusion(
        first_stage, unet, parsed["diffusion"].build(), scale, condition_encoder
    ).to(device)
    dataset = images
    if cache is not None:
        captions = list(images.dataset["caption"]) if condition.kind == "text" else None
        # on the CPU: the engine moves batches
        dataset = LatentDataset(cache[0] * scale, cache[1], captions)
    stage = LDMStage(ldm, parsed, first_stage_config)
    return stage, dataset, parsed["train"]


def warm_start(
    unet: UNet,
    init: InitConfig,
    first_stage_config: dict[str, Any] | None,
    encoder: nn.Module | None = None,
    condition: ConditionConfig | None = None,
) -> float:
    """Load ``init.checkpoint``'s U-Net weights into ``unet`` (and, for a text model with a
    jointly trained encoder, its text encoder's into ``encoder``); returns its scale factor.

    Refuses (ValueError) a checkpoint whose U-Net config, first stage, text encoder settings
    or vocabulary differ from this run's: its weights would then mean something else.
    """
    source = load_checkpoint(resolve_first_stage_path(init.checkpoint), expected_stage=STAGE)
    theirs = UNetConfig.from_dict(source.config["model"]).to_dict()
    ours = unet.config.to_dict()
    different = sorted(k for k in ours if ours[k] != theirs.get(k))
    if different:
        raise ValueError(
            f"init.checkpoint {init.checkpoint} has another U-Net: "
            + ", ".join(f"{k} {theirs.get(k)!r} there vs {ours[k]!r} here" for k in different)
        )
    their_first_stage = source.config["first_stage"].get("model_sha256")
    if first_stage_config is None:
        same_first_stage = their_first_stage is None
    else:
        same_first_stage = their_first_stage in weights_sha256s(first_stage_config)
    if not same_first_stage:
        raise ValueError(
            f"init.checkpoint {init.checkpoint} was trained on another first stage "
            f"({source.config['first_stage']['checkpoint']}); warm starts need the same one."
        )
    only_ema = source.config.get("shipped_weights") == "ema"  # a shipped LDM: EMA as weights
    if init.weights == "ema" and source.ema_state is not None:
        weights = {k: v for k, v in source.ema_state.items() if not k.startswith("__")}
    elif init.weights == "ema" and not only_ema:
        raise ValueError(
            f"init.checkpoint {init.checkpoint} has no EMA weights; set init.weights=raw"
        )
    elif init.weights == "raw" and only_ema:
        raise ValueError(
            f"init.checkpoint {init.checkpoint} ships only its EMA weights; set init.weights=ema"
        )
    else:
        weights = {k: v for k, v in source.model_state.items() if not k.startswith("first_stage.")}
    weights = _module_names(weights)
    unet.load_state_dict(_with_prefix(weights, "unet."))
    if isinstance(encoder, TextEncoder):  # trained jointly: its weights and vocabulary too
        assert condition is not None, "a text encoder warm start needs the condition config"
        _check_same_text_encoder(source.config, encoder, condition, init.checkpoint)
        encoder.load_state_dict(_with_prefix(weights, "condition_encoder."))
    log.info(
        "U-Net initialised from %s (%s weights, step %d)",
        init.checkpoint,
        init.weights,
        source.step,
    )
    return float(source.config["scale_factor"])


def train_ldm(
    config: dict[str, Any], out: str | Path, resume: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Train (or resume) an LDM run into ``out``; returns the last logged values."""
    from ldm_mini.environment import pick_device

    train = TrainConfig.from_dict(config.get("train", {}))
    device = pick_device(None if train.device == "auto" else train.device)
    stage, dataset, train_config = make_stage(config, device)
    trainer = Trainer(stage, dataset, train_config, out, resume=resume, progress=progress)
    return trainer.fit()


def _referenced_first_stage_state(first: dict[str, Any], path: str | Path) -> dict[str, Tensor]:
    """The weights of the autoencoder an LDM checkpoint refers to, checked by sha256."""
    source = resolve_first_stage_path(first["checkpoint"])
    try:
        autoencoder = load_checkpoint(source, expected_stage="autoencoder")
    except CheckpointError as err:
        raise CheckpointError(
            f"{path} stores its first stage by reference to {first['checkpoint']}, which "
            f"cannot be loaded: {err}"
        ) from err
    if first.get("model_sha256") not in weights_sha256s(autoencoder.config):
        hint = ""
        if _is_decoder_fine_tune_of(autoencoder.config, first.get("model_sha256")):
            hint = (
                f" The one in {source} is a decoder-only fine-tune of it (same latents): "
                "ldm_mini.ldm_training.repoint_first_stage(checkpoint, autoencoder, destination) "
                "writes a copy that decodes with it."
            )
        raise CheckpointError(
            f"{path} was trained on another autoencoder than the one now in {source} (the "
            "sha256 of its weights differs); restore that autoencoder or retrain the LDM." + hint
        )
    return autoencoder.model_state


def _is_decoder_fine_tune_of(autoencoder_config: dict[str, Any], sha256: str | None) -> bool:
    """Whether an autoencoder is a decoder-only fine-tune of the one whose weights have
    ``sha256`` (its ``init`` record names that start and a frozen encoder: the same latents)."""
    init = autoencoder_config.get("init") or {}
    return init.get("trainable") == "decoder" and sha256 in init.get("model_sha256s", [])


def repoint_first_stage(
    source: str | Path,
    autoencoder: str,
    destination: str | Path,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Copy the diffusion checkpoint ``source`` (LDM or SR, first stage by reference) to
    ``destination``, referring to ``autoencoder`` instead: a decoder-only fine-tune
    (``init.trainable = "decoder"``) of the autoencoder it was trained on, so its latents are
    the same and only the decoding changes. Anything else is refused. ``extra`` joins the
    config (e.g. metrics measured with the new decoder)."""
    from ldm_mini.checkpoints import export_checkpoint

    checkpoint = load_checkpoint(source)
    first = checkpoint.config.get("first_stage") or {}
    if checkpoint.stage not in ("ldm", "sr") or first.get("model_sha256") is None:
        raise CheckpointError(f"{source} is not a diffusion checkpoint with an autoencoder")
    if any(k.startswith("first_stage.") for k in checkpoint.model_state):
        raise CheckpointError(f"{source} stores its own first stage; there is nothing to repoint")
    new = load_checkpoint(resolve_first_stage_path(autoencoder), expected_stage="autoencoder")
    if not _is_decoder_fine_tune_of(new.config, first["model_sha256"]):
        raise CheckpointError(
            f"{autoencoder} is not a decoder-only fine-tune of the autoencoder {source} was "
            "trained on (its config's init records another start, or a trained encoder): its "
            "latents may differ; retrain on it instead"
        )
    record = {**first, "checkpoint": autoencoder, "autoencoder": new.config,
              "model_sha256": new.config["files"]["model.safetensors"]}  # fmt: skip
    half = checkpoint.config.get("weights_dtype") == "float16"
    return export_checkpoint(source, destination, {"first_stage": record, **(extra or {})}, half)


def export_ldm(source: str | Path, destination: str | Path, extra: dict[str, Any]) -> Path:
    """Write a shipped LDM: the EMA U-Net as its weights, no trainer state, and the first
    stage by reference (checked by sha256 when loaded) when it is a shipped autoencoder."""
    return export_ema_checkpoint(source, destination, extra, STAGE)


def export_ema_checkpoint(
    source: str | Path, destination: str | Path, extra: dict[str, Any], stage: str
) -> Path:
    """Ship a diffusion run of ``stage`` (``ldm`` or ``sr``): its EMA weights (the U-Net, and
    the text encoder when trained jointly), the first stage copied unless it is a shipped
    autoencoder (then referenced by sha256), no trainer state; ``extra`` joins the config."""
    from ldm_mini.checkpoints import save_checkpoint

    checkpoint = load_checkpoint(source, expected_stage=stage)
    config = saved_config(checkpoint.config)
    if checkpoint.ema_state is None:
        raise CheckpointError(f"{source} has no EMA weights to ship")
    ema = {k: v for k, v in checkpoint.ema_state.items() if not k.startswith("__")}
    if config.get("condition", {}).get("kind") == "text":  # the EMA holds unet. and encoder
        state = dict(ema)
    else:
        state = {f"unet.{k}": v for k, v in ema.items()}
    if not config["first_stage"]["checkpoint"].startswith("shipped:"):
        state.update(
            {k: v for k, v in checkpoint.model_state.items() if k.startswith("first_stage.")}
        )
    config.update(extra, shipped_weights="ema")
    return save_checkpoint(
        destination, stage=stage, config=config, model_state=state, step=checkpoint.step
    )


def _module_names(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Weights named ``unet.*`` (and ``condition_encoder.*``): a U-Net-only EMA stores the
    U-Net's names without the prefix."""
    if any(k.startswith("unet.") for k in weights):
        return weights
    return {f"unet.{k}": v for k, v in weights.items()}


def _with_prefix(weights: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``weights`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def _check_same_text_encoder(
    source_config: dict[str, Any],
    encoder: TextEncoder,
    condition: ConditionConfig,
    checkpoint: str,
) -> None:
    """A warm start of a jointly trained text encoder needs the same encoder settings and the
    same vocabulary (token ids index its embedding table)."""
    theirs = source_config.get("condition", {})
    if theirs.get("kind") != "text" or theirs.get("text_encoder", "trained") != "trained":
        raise ValueError(
            f"init.checkpoint {checkpoint} has no jointly trained text encoder "
            f"(condition {theirs.get('kind')!r}, {theirs.get('text_encoder')!r})"
        )
    keys = ("text_dim", "text_depth", "text_heads", "max_length")
    ours = {k: getattr(condition, k) for k in keys}
    different = [k for k in ours if theirs.get(k) != ours[k]]
    if different:
        raise ValueError(
            f"init.checkpoint {checkpoint} has another text encoder: "
            + ", ".join(f"{k} {theirs.get(k)!r} there vs {ours[k]!r} here" for k in different)
        )
    their_words = (source_config.get("tokenizer") or {}).get("vocabulary")
    our_words = encoder.tokenizer.to_dict()["vocabulary"]
    if their_words != our_words:
        missing = sorted(set(our_words) - set(their_words or []))[:5]
        raise ValueError(
            f"init.checkpoint {checkpoint} has another vocabulary ({len(their_words or [])} vs "
            f"{len(our_words)} words; here but not there: {missing}); warm starts of a text "
            "model need the same training captions' words."
        )


def load_ldm(path: str | Path, device: str = "cpu", use_ema: bool = True):
    """Load an LDM checkpoint (EMA weights of the U-Net by default); returns (ldm, config)."""
    checkpoint = load_checkpoint(path, expected_stage=STAGE)
    config = checkpoint.config
    state = checkpoint.model_state
    first_stage = load_first_stage_of(config, state, path)
    unet = UNet(UNetConfig.from_dict(config["model"]))
    condition = config_from_dict(ConditionConfig, config.get("condition", {}), "condition")
    encoder = None
    if condition.kind == "text":
        if not config.get("tokenizer"):
            raise CheckpointError(f"{path} is text-conditional but stores no tokenizer")
        if condition.text_encoder == "minilm":  # frozen, referenced by sha256, not stored
            encoder = build_pretrained_text_encoder(
                condition, expected_sha256=config["tokenizer"]["model_sha256"]
            )
        else:
            encoder = build_text_encoder(condition, WordTokenizer.from_dict(config["tokenizer"]))
    if use_ema and checkpoint.ema_state is not None:
        weights = _module_names(
            {k: v for k, v in checkpoint.ema_state.items() if not k.startswith("__")}
        )
    else:
        if use_ema and config.get("shipped_weights") != "ema":
            log.warning("%s has no EMA weights; using the raw U-Net weights", path)
        weights = {k: v for k, v in state.items() if not k.startswith("first_stage.")}
    parts: dict[str, nn.Module] = {"unet": unet}
    if isinstance(encoder, TextEncoder):
        parts["condition_encoder"] = encoder
    for name, module in parts.items():
        prefix = f"{name}."
        try:
            module.load_state_dict(_with_prefix(weights, prefix))
        except RuntimeError as err:
            raise CheckpointError(
                f"the {name} weights in {path} do not fit its config: {err}"
            ) from err
    schedule = config_from_dict(DiffusionConfig, config["diffusion"], "diffusion").build()
    ldm = LatentDiffusion(first_stage, unet, schedule, float(config["scale_factor"]), encoder)
    return ldm.to(device).eval(), config


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
):
    """n images (n, C, H, W) in [-1, 1] in batches, reproducible from ``seed``.

    ``eta`` (DDIM only): the share of DDPM's fresh noise at each step, 0 (deterministic, the
    default) to 1 (as much noise as DDPM); a stochastic sampler corrects part of an
    undertrained model's error (Karras et al. 2022, Sec. 4).
    Class-conditional models get ``labels`` (default: 0, 1, ..., K-1, 0, ...); text models
    need ``prompts`` (n strings). Returns ``(images, labels, trajectories)``; trajectories
    (scaled latents after each step) only for the first batch and only when
    ``return_trajectory``.
    """
    if ldm.condition_encoder is not None and (prompts is None or len(prompts) != n):
        raise ValueError(f"this LDM is text-conditional: pass prompts, a list of {n} strings.")
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
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        batch_labels = None if labels is None else labels[start : start + count]
        batch_prompts = None if prompts is None else list(prompts[start : start + count])
        out, output = ldm.sample(
            count,
            (latent, latent),
            sampler=sampler,
            steps=steps,
            labels=batch_labels,
            prompts=batch_prompts,
            guidance=guidance,
            generator=generator,
            return_trajectory=return_trajectory and start == 0,
            progress=progress,
            eta=eta,
        )
        images.append(out.cpu())
        if return_trajectory and start == 0:
            trajectory = output
    return torch.cat(images), labels, trajectory


@torch.no_grad()
def shapes_conditioning(
    ldm: LatentDiffusion,
    n: int,
    image_size: int,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Conditioning accuracy of a text model trained on shapes, on the held-out prompts.

    Samples n images for the held-out prompts (unseen colour-shape-relation combinations,
    :func:`ldm_mini.data.shapes.heldout_prompts`, in turn) and reads them back with
    :mod:`ldm_mini.shapes_checker`: the fraction whose objects match every attribute of their
    prompt, and per attribute.
    """
    from ldm_mini.data.shapes import heldout_prompts
    from ldm_mini.shapes_checker import conditioning_accuracy

    held = heldout_prompts()
    prompts = [held[i % len(held)] for i in range(n)]
    images, _, _ = generate(
        ldm,
        n,
        image_size,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        seed=seed,
        prompts=prompts,
    )
    accuracy = conditioning_accuracy(images, prompts)
    return {
        "conditioning_accuracy": accuracy["all"],
        "conditioning_by_part": {k: v for k, v in accuracy.items() if k != "all"},
        "conditioning_prompts": f"{len(held)} held-out shapes prompts",
    }


@torch.no_grad()
def evaluate_ldm(
    path: str | Path,
    n: int = 1000,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    feature_extractor: str = "auto",
    with_kid: bool = True,
    device: str = "cpu",
    eta: float = 0.0,
) -> dict[str, Any]:
    """FD (and KID) of n samples against the first n images of the test split, and timing;
    for class-conditional Fashion-MNIST models also the class accuracy of the samples."""
    from ldm_mini import metrics

    start = time.perf_counter()
    ldm, config = load_ldm(path, device)
    data = DataConfig(**{**config["data"], "split": "test", "limit": n, "hflip": False})
    test = build_dataset(data)
    if len(test) < n:
        raise ValueError(f"the test split has only {len(test)} images; use --n {len(test)}.")
    real = torch.stack([test[i]["image"] for i in range(n)])
    prompts = list(test.dataset["caption"][:n]) if ldm.condition_encoder is not None else None
    sample_start = time.perf_counter()
    fake, labels, _ = generate(
        ldm,
        n,
        data.image_size,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        seed=seed,
        prompts=prompts,
        eta=eta,
    )
    sampling_seconds = time.perf_counter() - sample_start
    fd = metrics.frechet_distance(real, fake, feature_extractor)
    result: dict[str, Any] = {
        "checkpoint": str(path),
        "dataset": data.dataset,
        "n": n,
        "sampler": sampler,
        "steps": steps,
        "eta": eta,
        "guidance": guidance,
        "fd": fd["fd"],
        "fd_label": fd["label"],
        "feature_extractor": fd["feature_extractor"],
        "seconds_per_sample": sampling_seconds / n,
    }
    if with_kid:
        kid = metrics.kernel_inception_distance(real, fake, fd["feature_extractor"])
        result.update(kid=kid["kid_mean"], kid_std=kid["kid_std"], kid_label=kid["label"])
    if labels is not None and data.dataset == "fashion_mnist":
        from ldm_mini.classifier import class_accuracy, load_classifier

        # the fraction of samples the shipped classifier reads as the class asked for
        accuracy = class_accuracy(load_classifier(device=device), fake, labels)
        result.update(
            class_accuracy=accuracy["accuracy"],
            class_accuracy_by_class=accuracy["per_class"],
            classifier="shipped:fashion_mnist_classifier",
        )
    if ldm.condition_encoder is not None and data.dataset == "shapes":
        result.update(
            shapes_conditioning(
                ldm, n, data.image_size, sampler=sampler, steps=steps, guidance=guidance, seed=seed
            )
        )
    result["seconds"] = time.perf_counter() - start
    return result
