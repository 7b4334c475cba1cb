"""Training and evaluating the first stage: the perceptual autoencoder (KL or VQ).

Puts together :mod:`ldm_mini.autoencoder` (the model), :mod:`ldm_mini.losses` (L1 +
perceptual + patch-GAN + KL/VQ terms) and the one training engine :mod:`ldm_mini.train`.
``ldm-mini train-autoencoder`` and ``ldm-mini evaluate autoencoder`` call into here.
Taught in notebooks 01_perceptual_autoencoder and 02_vector_quantization.

A run can start from a trained autoencoder (``init.checkpoint``) and train only its decoder
(``init.trainable = "decoder"``): the parts that compute the latent stay frozen, so every
latent, and every diffusion model trained on them, stays valid while the reconstructions get
better (Stable Diffusion's "ft-MSE" decoder was made this way; notebook 08 uses it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ldm_mini.autoencoder import AutoencoderConfig, build_autoencoder
from ldm_mini.checkpoints import load_checkpoint, resolve_checkpoint_dir, weights_sha256s
from ldm_mini.losses import AutoencoderLoss, AutoencoderLossConfig
from ldm_mini.train import TrainConfig, Trainer, TrainingStage, config_from_dict

STAGE = "autoencoder"
log = logging.getLogger("ldm_mini.first_stage")
# the modules that compute the latent z from x (the rest, post_quant_conv and decoder, decode)
LATENT_PARTS = ("encoder", "quant_conv", "quantizer")
TRAINABLE = ("all", "decoder")


@dataclass
class DataConfig:
    """Which images the autoencoder trains on, and how they become tensors."""

    dataset: str = "fashion_mnist"
    split: str = "train"
    image_size: int = 32
    channels: int | None = None  # None: 1 for greyscale datasets, 3 otherwise
    resize: str = "auto"
    hflip: bool = False
    limit: int | None = None  # use only the first N images (quick runs)
    # options for the dataset's loader, e.g. {"prompts": "seen"} for shapes (see load_dataset)
    options: dict[str, Any] | None = None
    # None: one item per image, brought to image_size by `resize`; N: N random crops of
    # image_size x image_size per image and epoch at native resolution (a few large photos)
    crops_per_image: int | None = None
    # random channel order and saturation per item (RGB only; ldm_mini.data.tensors.colour_jitter)
    jitter_colours: bool = False

    def __post_init__(self) -> None:
        if self.crops_per_image is not None and (
            isinstance(self.crops_per_image, bool)
            or not isinstance(self.crops_per_image, int)
            or self.crops_per_image < 1
        ):
            raise ValueError(
                f"data.crops_per_image must be null or an int >= 1, got {self.crops_per_image!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class OptimConfig:
    """Adam settings for the generator (autoencoder) and the discriminator."""

    lr: float = 2e-4
    disc_lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    vq_reseed_every: int = 200  # VQ: re-seed codes unused since the last re-seed (0: never)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values


@dataclass
class InitConfig:
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def latent_parts_sha256(model: torch.nn.Module) -> str:
    """sha256 of the weights that compute the latent (:data:`LATENT_PARTS`, as float32 bytes):
    two autoencoders with the same value encode every image to the same latent."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.split(".", 1)[0] in LATENT_PARTS:
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


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
    allowed = {"description", "data", "model", "loss", "optim", "train", "init"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; sections: {sorted(allowed)}")
    data = config_from_dict(DataConfig, config.get("data", {}), "data")
    optim_values = dict(config.get("optim", {}))
    if "betas" in optim_values:
        optim_values["betas"] = tuple(optim_values["betas"])
    return {
        "data": data,
        "model": dict(config.get("model", {})),
        "loss": AutoencoderLossConfig.from_dict(config.get("loss", {})),
        "optim": config_from_dict(OptimConfig, optim_values, "optim"),
        "train": TrainConfig.from_dict(config.get("train", {})),
        "init": config_from_dict(InitConfig, config.get("init") or {}, "init"),
    }


def build_dataset(data: DataConfig, seed: int = 0):
    """The training images as a :class:`~ldm_mini.data.TensorImageDataset`."""
    from ldm_mini.data import TensorImageDataset, load_dataset

    kwargs = dict(data.options or {})
    if data.dataset == "shapes" and data.limit is not None and "num_samples" not in kwargs:
        from ldm_mini.data.shapes import DEFAULT_SIZES

        # shapes are generated, and any prefix equals the smaller set: render only the limit
        kwargs["num_samples"] = min(data.limit, DEFAULT_SIZES.get(data.split, data.limit))
    hf_dataset = load_dataset(data.dataset, split=data.split, **kwargs)
    if data.limit is not None:
        hf_dataset = hf_dataset.select(range(min(data.limit, len(hf_dataset))))
    if data.crops_per_image is not None:
        return TensorImageDataset(
            hf_dataset,
            data.image_size,
            data.channels,
            "crop",
            random_crop=True,
            hflip=data.hflip,
            seed=seed,
            repeat=data.crops_per_image,
            jitter_colours=data.jitter_colours,
        )
    return TensorImageDataset(
        hf_dataset,
        data.image_size,
        data.channels,
        data.resize,
        hflip=data.hflip,
        seed=seed,
        jitter_colours=data.jitter_colours,
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
        log.info("perceptual backbone: %s", self.loss_fn.perceptual_backbone_name)
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
        checkpoint = load_checkpoint(resolve_checkpoint_dir(source), expected_stage=STAGE)
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
            output = self.model(images)
            scratch["reconstruction"] = output.reconstruction
            loss, logged = self.loss_fn.generator_loss(
                images, output.reconstruction, output.regularization, step, self.model.last_layer
            )
            for key, value in output.stats.items():
                logged[key] = float(value)
            return loss, logged
        return self.loss_fn.discriminator_loss(images, scratch["reconstruction"], step)

    @torch.no_grad()
    def after_step(self, batch, step, scratch) -> None:
        every = self.optim.vq_reseed_every
        if self.model_config.kind == "vq" and every and step % every == 0 and not self.frozen:
            latents = self.model.encode(batch["image"])
            self.model.quantizer.reseed_dead_codes(latents)

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


def make_stage(config: dict[str, Any]) -> tuple[AutoencoderStage, Any, TrainConfig]:
    """Build the stage, its dataset and the engine config from a full config dict."""
    parsed = parse_config(config)
    dataset = build_dataset(parsed["data"], seed=parsed["train"].seed)
    init: InitConfig = parsed["init"]
    model_values = dict(parsed["model"])
    if init.checkpoint is not None:  # the architecture is the starting checkpoint's
        start = load_checkpoint(resolve_checkpoint_dir(init.checkpoint), expected_stage=STAGE)
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
    stage, dataset, train_config = make_stage(config)
    trainer = Trainer(stage, dataset, train_config, out, resume=resume, progress=progress)
    return trainer.fit()


def load_autoencoder(path: str | Path, device: str = "cpu"):
    """Load a trained autoencoder from a checkpoint folder, in eval mode.

    Returns ``(model, config)``; the config is the checkpoint's ``config.json``.
    """
    checkpoint = load_checkpoint(path, expected_stage=STAGE)
    model = build_autoencoder(AutoencoderConfig.from_dict(checkpoint.config["model"]))
    model.load_state_dict(checkpoint.model_state)
    return model.to(device).eval(), checkpoint.config


@torch.no_grad()
def evaluate_autoencoder(
    path: str | Path,
    dataset: str | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 250,
    perceptual_backbone: str | None = None,
    feature_extractor: str = "auto",
    with_fd: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Reconstruction metrics of a checkpoint on a dataset split (default: the one it trained
    on, test split): PSNR, SSIM, perceptual distance, FD, latent shape and std, seconds."""
    from ldm_mini import metrics
    from ldm_mini.perceptual import PerceptualDistance

    start = time.perf_counter()
    model, config = load_autoencoder(path, device)
    data = DataConfig(**{**config["data"], "split": split, "limit": limit, "hflip": False})
    if dataset is not None:
        data.dataset = dataset
    images = build_dataset(data)
    backbone = perceptual_backbone or config.get("perceptual_backbone") or "auto"
    min_size = config.get("loss", {}).get("perceptual_min_size", 64)
    perceptual = PerceptualDistance(backbone, min_size=min_size).to(device)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
    sums = {"psnr": 0.0, "ssim": 0.0, "perceptual": 0.0}
    latent_sum = latent_sq = 0.0
    latent_count = 0
    originals, reconstructions = [], []
    latent_shape = None
    for batch in loader:
        x = batch["image"].to(device)
        latent = model.encode_latent(x)
        reconstruction = model.decode_latent(latent).clamp(-1, 1)
        latent_shape = list(latent.shape[1:])
        latent_sum += float(latent.double().sum())
        latent_sq += float((latent.double() ** 2).sum())
        latent_count += latent.numel()
        sums["psnr"] += float(metrics.psnr(x, reconstruction).sum())
        sums["ssim"] += float(metrics.ssim(x, reconstruction).sum())
        sums["perceptual"] += float(perceptual(x, reconstruction).sum())
        if with_fd:
            originals.append(x.cpu())
            reconstructions.append(reconstruction.cpu())
    count = len(images)
    mean = latent_sum / latent_count
    result: dict[str, Any] = {
        "checkpoint": str(path),
        "dataset": data.dataset,
        "split": split,
        "n": count,
        "psnr": sums["psnr"] / count,
        "ssim": sums["ssim"] / count,
        "perceptual": sums["perceptual"] / count,
        "perceptual_backbone": perceptual.backbone_name,
        "latent_shape": latent_shape,
        "latent_std": (latent_sq / latent_count - mean**2) ** 0.5,
    }
    if with_fd:
        fd = metrics.frechet_distance(
            torch.cat(originals), torch.cat(reconstructions), feature_extractor
        )
        result["fd"] = fd["fd"]
        result["fd_feature_extractor"] = fd["feature_extractor"]
        result["fd_label"] = fd["label"]
    result["seconds"] = time.perf_counter() - start
    return result


def checkpoint_card(
    title: str, command: str, config: dict[str, Any], metrics: dict[str, Any], machine: str
) -> str:
    """The README.md card of a shipped autoencoder checkpoint."""
    model, data = config["model"], config["data"]
    train = config["train"]
    lines = [
        f"# {title}",
        "",
        f"- **Stage:** autoencoder ({model['kind'].upper()}-regularized), f = {model['f']}, "
        f"latent {metrics['latent_shape']} (c, h, w)",
        f"- **Data:** `{data['dataset']}` split `{data['split']}`, {data['image_size']}x"
        f"{data['image_size']}, {model['in_channels']} channel(s)",
        f"- **Trained with:** `{command}`",
        f"- **Training:** {train['steps']} steps, batch {train['batch_size']}, on {machine}, "
        f"{config['train_seconds'] / 60:.1f} min wall time",
        f"- **Perceptual loss backbone:** {config.get('perceptual_backbone')}",
        "",
        f"## Measured on `{metrics['dataset']}` split `{metrics['split']}` "
        f"({metrics['n']:,} images)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| PSNR | {metrics['psnr']:.2f} dB |",
        f"| SSIM | {metrics['ssim']:.4f} |",
        f"| perceptual distance ({metrics['perceptual_backbone']}) | {metrics['perceptual']:.4f} |",
    ]
    if "fd" in metrics:
        lines.append(
            f"| {metrics['fd_label']} (reconstructions vs originals) | {metrics['fd']:.3f} |"
        )
    lines += [
        f"| latent std (1 / latent scale factor) | {metrics['latent_std']:.4f} |",
        "",
        "Measured with `ldm-mini evaluate autoencoder --checkpoint <this folder> --json`.",
        "",
    ]
    return "\n".join(lines)
