"""Loading any trained stage from its checkpoint folder, shipped or trained: no training code.

Taught in notebooks 01 (autoencoders), 06 (LDMs) and 08 (super-resolution). A checkpoint
(:mod:`ldm_mini.checkpoints`) names its stage in its config; :func:`load` reads that and
builds the model: an autoencoder, or a :class:`~ldm_mini.ldm.LatentDiffusion` (LDM or SR) with
its frozen first stage, its U-Net (EMA weights by default), its schedule and scale factor s,
and for text models tau_theta. A diffusion checkpoint stores its first stage's weights, or,
for a shipped autoencoder, a reference checked by the sha256 of the autoencoder's weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ldm_mini.autoencoder import AutoencoderConfig, build_autoencoder
from ldm_mini.checkpoints import (
    CheckpointError,
    is_decoder_fine_tune_of,
    load_checkpoint,
    read_checkpoint_config,
    weights_sha256s,
)
from ldm_mini.conditioning import (
    ConditionConfig,
    TextEncoder,
    WordTokenizer,
    build_layout_encoder,
    build_pretrained_text_encoder,
    build_text_encoder,
)
from ldm_mini.configs import config_from_dict
from ldm_mini.diffusion import DiffusionConfig
from ldm_mini.layouts import LayoutEncoder
from ldm_mini.ldm import IdentityFirstStage, LatentDiffusion
from ldm_mini.unet import UNet, UNetConfig

STAGES = ("autoencoder", "ldm", "sr", "inpaint")
log = logging.getLogger("ldm_mini.pipelines")


def load(path: str | Path, device: str = "cpu", use_ema: bool = True) -> tuple[nn.Module, dict]:
    """Any checkpoint (a folder, a training run's folder, ``shipped:NAME`` or
    ``hf:org/name[@revision]`` on the Hugging Face Hub, :mod:`ldm_mini.hub_models`): ``(model,
    config)``, the model in eval mode on ``device``: an autoencoder for stage ``autoencoder``,
    a :class:`~ldm_mini.ldm.LatentDiffusion` for ``ldm``, ``sr`` and ``inpaint``."""
    stage = read_checkpoint_config(path)["stage"]
    if stage == "autoencoder":
        return load_autoencoder(path, device)
    if stage == "ldm":
        return load_ldm(path, device, use_ema)
    if stage == "sr":
        return load_sr(path, device, use_ema)
    if stage == "inpaint":
        return load_inpaint(path, device, use_ema)
    raise CheckpointError(f"{path} holds a {stage!r} checkpoint; load() reads {list(STAGES)}")


def load_autoencoder(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A trained autoencoder (KL or VQ) in eval mode; returns ``(model, config)``."""
    checkpoint = load_checkpoint(path, expected_stage="autoencoder")
    model = build_autoencoder(AutoencoderConfig.from_dict(checkpoint.config["model"]))
    model.load_state_dict(checkpoint.model_state)
    return model.to(device).eval(), checkpoint.config


def load_first_stage(source: str, channels: int) -> tuple[nn.Module, dict[str, Any] | None]:
    """The first stage named by a config's ``first_stage.checkpoint``: ``identity`` (pixel
    space, LDM-1) or an autoencoder folder, ``shipped:NAME`` or ``hf:org/name`` for images of
    ``channels`` channels. Returns ``(module, the autoencoder's config or None for the
    identity)``."""
    if source == "identity":
        return IdentityFirstStage(channels), None
    model, config = load_autoencoder(source)
    if model.config.in_channels != channels:
        raise ValueError(
            f"the autoencoder {source} takes {model.config.in_channels}-channel images but the "
            f"data has {channels} channels; pick an autoencoder trained on this kind of data."
        )
    return model, config


def first_stage_of(config: dict[str, Any], state: dict[str, Tensor], path) -> nn.Module:
    """The first stage of a diffusion checkpoint: the identity, or its autoencoder with the
    weights stored in ``state`` ("first_stage." keys) or in the referenced shipped folder."""
    first = config["first_stage"]
    if first["checkpoint"] == "identity":
        return IdentityFirstStage(int(first["latent_channels"]))
    first_stage = build_autoencoder(AutoencoderConfig.from_dict(first["autoencoder"]["model"]))
    first_state = with_prefix(state, "first_stage.")
    if not first_state:
        first_state = _referenced_first_stage_state(first, path)
    first_stage.load_state_dict(first_state)
    return first_stage


def _referenced_first_stage_state(first: dict[str, Any], path: str | Path) -> dict[str, Tensor]:
    """The weights of the autoencoder a diffusion checkpoint refers to, checked by sha256."""
    try:
        autoencoder = load_checkpoint(first["checkpoint"], expected_stage="autoencoder")
    except CheckpointError as err:
        raise CheckpointError(
            f"{path} stores its first stage by reference to {first['checkpoint']}, which "
            f"cannot be loaded: {err}"
        ) from err
    if first.get("model_sha256") not in weights_sha256s(autoencoder.config):
        hint = ""
        if is_decoder_fine_tune_of(autoencoder.config, first.get("model_sha256")):
            hint = (
                f" The one in {autoencoder.path} is a decoder-only fine-tune of it (same "
                "latents): ldm_mini.checkpoints.repoint_first_stage(checkpoint, autoencoder, "
                "destination) writes a copy that decodes with it."
            )
        raise CheckpointError(
            f"{path} was trained on another autoencoder than the one now in {autoencoder.path} "
            "(the sha256 of its weights differs); restore that autoencoder or retrain the model."
            + hint
        )
    return autoencoder.model_state


def with_prefix(weights: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``weights`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def module_names(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Weights named ``unet.*`` (and ``condition_encoder.*``): a U-Net-only EMA stores the
    U-Net's names without the prefix."""
    if any(k.startswith("unet.") for k in weights):
        return weights
    return {f"unet.{k}": v for k, v in weights.items()}


def trained_weights(checkpoint, use_ema: bool = True) -> dict[str, Tensor]:
    """The trained modules' weights of a diffusion checkpoint (``unet.*``, and
    ``condition_encoder.*`` when tau_theta was trained jointly): its EMA by default (what it
    samples with; a shipped checkpoint's weights are its EMA), else the raw weights."""
    if use_ema and checkpoint.ema_state is not None:
        ema = checkpoint.ema_state
        return module_names({k: v for k, v in ema.items() if not k.startswith("__")})
    if use_ema and checkpoint.config.get("shipped_weights") != "ema":
        log.warning("%s has no EMA weights; using the raw weights", checkpoint.path)
    return {k: v for k, v in checkpoint.model_state.items() if not k.startswith("first_stage.")}


def _load_state(module: nn.Module, weights: dict[str, Tensor], name: str, path) -> None:
    try:
        module.load_state_dict(with_prefix(weights, f"{name}."))
    except RuntimeError as err:
        raise CheckpointError(f"the {name} weights in {path} do not fit its config: {err}") from err


def _load_diffusion(path, stage: str, device: str, use_ema: bool, condition_encoder=None):
    """The parts every diffusion checkpoint shares: first stage, U-Net, schedule, s."""
    checkpoint = load_checkpoint(path, expected_stage=stage)
    config = checkpoint.config
    first_stage = first_stage_of(config, checkpoint.model_state, path)
    unet = UNet(UNetConfig.from_dict(config["model"]))
    encoder = None if condition_encoder is None else condition_encoder(config, path)
    weights = trained_weights(checkpoint, use_ema)
    _load_state(unet, weights, "unet", path)
    if isinstance(encoder, (TextEncoder, LayoutEncoder)):  # trained jointly: stored here
        _load_state(encoder, weights, "condition_encoder", path)
    schedule = config_from_dict(DiffusionConfig, config["diffusion"], "diffusion").build()
    ldm = LatentDiffusion(first_stage, unet, schedule, float(config["scale_factor"]), encoder)
    return ldm.to(device).eval(), config


def _text_encoder(config: dict[str, Any], path) -> nn.Module | None:
    """tau_theta of an LDM checkpoint's config: None unless text- or layout-conditional."""
    condition = config_from_dict(ConditionConfig, config.get("condition", {}), "condition")
    if condition.kind == "layout":
        return build_layout_encoder(condition)
    if condition.kind != "text":
        return None
    if not config.get("tokenizer"):
        raise CheckpointError(f"{path} is text-conditional but stores no tokenizer")
    if condition.text_encoder == "minilm":  # frozen, referenced by sha256, not stored
        return build_pretrained_text_encoder(
            condition, expected_sha256=config["tokenizer"]["model_sha256"]
        )
    return build_text_encoder(condition, WordTokenizer.from_dict(config["tokenizer"]))


def load_ldm(path: str | Path, device: str = "cpu", use_ema: bool = True):
    """An LDM checkpoint (EMA weights by default); returns ``(ldm, config)``."""
    return _load_diffusion(path, "ldm", device, use_ema, _text_encoder)


def load_sr(path: str | Path, device: str = "cpu", use_ema: bool = True):
    """A super-resolution checkpoint (LDM-SR, LDM-BSR or the regression baseline; EMA weights
    by default); returns ``(ldm, config)``."""
    return _load_diffusion(path, "sr", device, use_ema)


def load_inpaint(path: str | Path, device: str = "cpu", use_ema: bool = True):
    """An inpainting checkpoint (EMA weights by default); returns ``(ldm, config)``."""
    return _load_diffusion(path, "inpaint", device, use_ema)
