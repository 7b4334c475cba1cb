"""Latent diffusion: the denoising U-Net trained on the latents of a frozen first stage.

Taught in notebook 06_latent_diffusion. The paper's idea in one class: encode the image once
with the frozen autoencoder, z = s * E(x); learn eps_theta(z_t, t, y) with the simple loss
E ||eps - eps_theta(z_t, t, y)||^2 (LDM Eq. 2); sample z_0 with any sampler of
:mod:`ldm_mini.samplers`; decode once, x = D(z_0 / s). Pixel-space diffusion is the same class
with :class:`IdentityFirstStage` (the paper's LDM-1), so "pixel vs latent" is one flag.

The latent scale factor s makes the latents roughly unit-variance, which the noise schedule
assumes (x_T ~ N(0, I) must look like a noised latent). As in the paper's code it is one
number, 1 / std of the encoded training latents, estimated once before training and stored
in the checkpoint (Stable Diffusion's 0.18215 is exactly this for its KL-f8 autoencoder).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ldm_mini.autoencoder import check_finite, latent_parts_sha256
from ldm_mini.conditioning import check_class_labels
from ldm_mini.configs import Section
from ldm_mini.diffusion import MIN_SNR_GAMMA, NoiseSchedule
from ldm_mini.samplers import (
    ClassifierFreeGuidance,
    SamplerOutput,
    ddim_sample,
    ddpm_sample,
    dpm_solver_pp_sample,
)
from ldm_mini.unet import UNet

SAMPLERS = ("ddpm", "ddim", "dpm++")


@dataclass
class FirstStageConfig(Section):
    """Which frozen first stage: a checkpoint folder, ``shipped:NAME``, ``hf:org/name`` (the
    Hugging Face Hub), or ``identity``."""

    checkpoint: str = "shipped:fashion_mnist_kl_f4"


class IdentityFirstStage(nn.Module):
    """The first stage of pixel-space diffusion (LDM-1): z = x and D(z) = z, f = 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}.")
        self.latent_channels = channels
        self.downsampling_factor = 1

    def encode_latent(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) in [-1, 1] -> the same tensor."""
        return x

    def decode_latent(self, z: Tensor) -> Tensor:
        """z (B, C, H, W) -> the same tensor."""
        return z


def first_stage_shape(first_stage: nn.Module) -> tuple[int, int]:
    """(latent channels c, downsampling factor f) of an autoencoder or the identity."""
    if isinstance(first_stage, IdentityFirstStage):
        return first_stage.latent_channels, 1
    config = getattr(first_stage, "config", None)
    if config is None or not hasattr(config, "latent_channels") or not hasattr(config, "f"):
        raise ValueError(
            f"the first stage must be an ldm_mini autoencoder (with .config.latent_channels and "
            f".config.f) or IdentityFirstStage, got {type(first_stage).__name__}."
        )
    return int(config.latent_channels), int(config.f)


def same_latents(first_stage: nn.Module, other: nn.Module) -> bool:
    """Whether two first stages encode every image to the same latent z = E(x): both the
    identity with as many channels, or autoencoders whose latent-computing weights are equal
    (:func:`~ldm_mini.autoencoder.latent_parts_sha256`; a decoder-only fine-tune keeps them).
    A diffusion model trained on one then samples the same latents on the other."""
    identities = [isinstance(m, IdentityFirstStage) for m in (first_stage, other)]
    if any(identities):
        return all(identities) and first_stage.latent_channels == other.latent_channels
    return latent_parts_sha256(first_stage) == latent_parts_sha256(other)


@torch.no_grad()
def estimate_scale_factor(
    first_stage: nn.Module, batches: Iterable[Tensor], device: str | torch.device = "cpu"
) -> dict[str, float]:
    """The latent scale factor s = 1 / std(z) over every entry of E(x) for the given images.

    ``batches``: image tensors (B, C, H, W) in [-1, 1] (e.g. a few thousand training images).
    Returns ``{"scale_factor", "latent_mean", "latent_std", "count"}``; the std is the
    population std over all latent entries (all images, channels and positions), computed in
    float64, as the paper's code does on its first batch, only over more data.
    """
    total = total_sq = 0.0
    count = 0
    for images in batches:
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError("each batch must be an image tensor (B, C, H, W) in [-1, 1].")
        z = first_stage.encode_latent(images.to(device)).double()
        total += float(z.sum())
        total_sq += float((z**2).sum())
        count += z.numel()
    if count == 0:
        raise ValueError("no images given: pass at least one batch to estimate the scale.")
    mean = total / count
    std = max(total_sq / count - mean**2, 0.0) ** 0.5
    if not std > 0:
        raise ValueError("the latents have zero variance; is the first stage trained?")
    # s = 1 / std(z): scaled latents s * z have unit variance
    return {"scale_factor": 1.0 / std, "latent_mean": mean, "latent_std": std, "count": count}


def slerp(a: Tensor, b: Tensor, alphas: Tensor | Iterable[float]) -> Tensor:
    """Spherical interpolation between two noise tensors, for every alpha in [0, 1].

    ``a`` and ``b``: tensors of one shape S (e.g. (c, h, w) starting noise x_T); ``alphas``:
    K values. Returns (K, *S). With theta the angle between a and b (flattened),
    slerp = sin((1 - alpha) theta) / sin theta * a + sin(alpha theta) / sin theta * b, which
    keeps the norm of Gaussian noise typical (a straight line between two samples of
    N(0, I) passes through points of norm about sqrt(1/2) of theirs halfway, which the
    sampler never saw). Nearly parallel inputs fall back to the straight line.
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    alphas = torch.as_tensor(alphas if isinstance(alphas, Tensor) else list(alphas))
    alphas = alphas.to(dtype=torch.float64, device=a.device).reshape(-1)
    if alphas.numel() == 0 or float(alphas.min()) < 0 or float(alphas.max()) > 1:
        raise ValueError("alphas must be one or more values in [0, 1].")
    flat_a, flat_b = a.reshape(-1).double(), b.reshape(-1).double()
    norms = flat_a.norm() * flat_b.norm()
    if not norms > 0:
        raise ValueError("a and b must be nonzero to interpolate on the sphere.")
    # theta = arccos(<a, b> / (|a| |b|))
    theta = torch.arccos((flat_a @ flat_b / norms).clamp(-1.0, 1.0))
    alphas = alphas[:, None]
    if float(torch.sin(theta)) < 1e-6:
        mixed = (1 - alphas) * flat_a + alphas * flat_b
    else:
        # slerp(a, b; alpha) = [sin((1 - alpha) theta) a + sin(alpha theta) b] / sin(theta)
        mixed = (
            torch.sin((1 - alphas) * theta) * flat_a + torch.sin(alphas * theta) * flat_b
        ) / torch.sin(theta)
    return mixed.reshape(-1, *a.shape).to(a.dtype)


def _is_layout_encoder(encoder: nn.Module | None) -> bool:
    from ldm_mini.layouts import LayoutEncoder

    return isinstance(encoder, LayoutEncoder)


class LatentDiffusion(nn.Module):
    """A frozen first stage, the denoising U-Net and the noise schedule, as one model.

    Args:
        first_stage: a trained autoencoder (``ldm_mini.pipelines.load_autoencoder``) or
            :class:`IdentityFirstStage` for pixel space. It is frozen here (no gradients, eval).
        unet: eps_theta; its ``in_channels`` must equal the first stage's latent channels.
        schedule: the forward process q(z_t | z_0).
        scale_factor: s, latents are ``s * E(x)``; 1.0 for pixel space.
        condition_encoder: tau_theta for text (``ldm_mini.conditioning.TextEncoder``), trained
            jointly with the U-Net, whose tokens the U-Net cross-attends to (its
            ``context_dim`` must equal the encoder's ``dim``); None for class-conditional
            (``num_classes`` in the U-Net's config: the label ``num_classes`` is the null
            class of classifier-free guidance) and unconditional models.
    """

    def __init__(
        self,
        first_stage: nn.Module,
        unet: UNet,
        schedule: NoiseSchedule,
        scale_factor: float = 1.0,
        condition_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        channels, factor = first_stage_shape(first_stage)
        context_dim = unet.config.context_dim
        if condition_encoder is not None and context_dim != getattr(condition_encoder, "dim", None):
            raise ValueError(
                f"the U-Net cross-attends to {context_dim}-dim tokens but the condition encoder "
                f"makes {getattr(condition_encoder, 'dim', None)}-dim ones; build the U-Net with "
                "context_dim = the encoder's dim."
            )
        if condition_encoder is None and context_dim is not None:
            raise ValueError(
                f"the U-Net cross-attends (context_dim={context_dim}) but no condition encoder "
                "was given: pass condition_encoder (e.g. a TextEncoder)."
            )
        if unet.config.in_channels != channels or unet.config.out_channels != channels:
            raise ValueError(
                f"the U-Net maps {unet.config.in_channels} -> {unet.config.out_channels} "
                f"channels but the first stage's latents have {channels}; build the U-Net "
                f"with in_channels = out_channels = {channels}."
            )
        if not scale_factor > 0:
            raise ValueError(f"scale_factor must be > 0, got {scale_factor!r}.")
        self.first_stage = first_stage.eval().requires_grad_(False)
        self.unet = unet
        self.condition_encoder = condition_encoder
        self.schedule = schedule
        self.latent_channels, self.downsampling_factor = channels, factor
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))

    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional U-Net (None otherwise); label num_classes is null."""
        return self.unet.config.num_classes

    @property
    def conditioning(self) -> str:
        """ "layout" or "text" (a condition encoder), "class" (num_classes) or "none"."""
        if self.condition_encoder is not None:
            return "layout" if _is_layout_encoder(self.condition_encoder) else "text"
        return "none" if self.num_classes is None else "class"

    def train(self, mode: bool = True) -> LatentDiffusion:
        """Train mode for the U-Net only: the first stage stays frozen in eval mode."""
        super().train(mode)
        self.first_stage.eval()
        return self

    # -- the two spaces ------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> scaled latents s * E(x), (B, c, H/f, W/f)."""
        # z = s * E(x)
        return self.first_stage.encode_latent(x) * self.scale_factor

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents (B, c, h, w) -> images D(z / s), (B, C, f h, f w), about [-1, 1]."""
        # x = D(z / s)
        return self.first_stage.decode_latent(z / self.scale_factor)

    # -- training ------------------------------------------------------------------------
    def class_labels_for_training(
        self,
        labels: Tensor | None,
        drop_probability: float,
        generator: torch.Generator | None = None,
    ) -> Tensor | None:
        """Labels with each one replaced by the null class with ``drop_probability``.

        One model then learns p(z | y) and p(z) (for classifier-free guidance). None when the
        U-Net is unconditional; a clear error when labels are missing or out of range.
        """
        if self.num_classes is None:
            if labels is not None:
                raise ValueError(
                    "this LDM is unconditional (its U-Net has no num_classes) but got labels."
                )
            return None
        if labels is None:
            raise ValueError(
                f"this LDM is class-conditional ({self.num_classes} classes): pass the labels."
            )
        check_class_labels(labels, self.num_classes)
        if not 0.0 <= drop_probability <= 1.0:
            raise ValueError(f"drop_probability must be in [0, 1], got {drop_probability}.")
        if drop_probability == 0:
            return labels
        device = generator.device if generator is not None else labels.device
        drop = torch.rand(labels.shape, generator=generator, device=device) < drop_probability
        return self.drop_labels(labels, drop)

    def drop_labels(self, labels: Tensor, drop: Tensor) -> Tensor:
        """y -> the null class K where ``drop`` (B,) is True: the unconditional p(z) of
        classifier-free guidance is learned on these."""
        return torch.where(
            drop.to(labels.device), torch.full_like(labels, self.num_classes), labels
        )

    def captions_for_training(
        self,
        captions: Sequence[str] | None,
        batch: int,
        drop_probability: float,
        generator: torch.Generator | None = None,
    ) -> list[str] | None:
        """Captions with each one replaced by "" (the null condition) with ``drop_probability``.

        None when the LDM is not text-conditional; a clear error when captions are missing.
        """
        if self.condition_encoder is None or self.conditioning == "layout":
            if captions is not None:
                raise ValueError("this LDM has no text encoder but got captions.")
            return None
        if captions is None or isinstance(captions, str) or len(captions) != batch:
            got = "none" if captions is None else type(captions).__name__
            if captions is not None and not isinstance(captions, str):
                got += f" of {len(captions)}"
            raise ValueError(
                f"this LDM is text-conditional: pass {batch} captions (a list of str), got {got}."
            )
        if not 0.0 <= drop_probability <= 1.0:
            raise ValueError(f"drop_probability must be in [0, 1], got {drop_probability}.")
        if drop_probability == 0:
            return list(captions)
        drop = torch.rand(batch, generator=generator) < drop_probability
        return self.drop_captions(captions, drop)

    @staticmethod
    def drop_captions(captions: Sequence[str], drop: Tensor) -> list[str]:
        """caption -> "" (the null condition) where ``drop`` (B,) is True."""
        return [
            "" if dropped else caption
            for caption, dropped in zip(captions, drop.tolist(), strict=True)
        ]

    def layouts_for_training(
        self,
        layouts: Tensor | None,
        batch: int,
        drop_probability: float,
        generator: torch.Generator | None = None,
    ) -> Tensor | None:
        """Layouts (B, N, 5) with each one replaced by the empty layout (the null condition)
        with ``drop_probability``; None unless the LDM is layout-conditional."""
        if self.conditioning != "layout":
            if layouts is not None:
                raise ValueError("this LDM has no layout encoder but got layouts.")
            return None
        if not isinstance(layouts, Tensor) or layouts.ndim != 3 or layouts.shape[0] != batch:
            raise ValueError(
                f"this LDM is layout-conditional: pass layouts ({batch}, N, 5), got "
                f"{tuple(getattr(layouts, 'shape', ())) or type(layouts).__name__}."
            )
        if drop_probability == 0:
            return layouts
        drop = torch.rand(batch, generator=generator) < drop_probability
        return self.drop_layouts(layouts, drop)

    @staticmethod
    def drop_layouts(layouts: Tensor, drop: Tensor) -> Tensor:
        """layout -> the empty layout (every slot's class -1, the null condition) where
        ``drop`` (B,) is True."""
        from ldm_mini.layouts import EMPTY

        dropped = layouts.clone()
        dropped[drop.to(layouts.device), :, 0] = EMPTY
        return dropped

    def _checked_concat(self, concat: Tensor | None, batch: int, size: tuple[int, int]) -> Tensor:
        """The concatenated input, (batch, concat_channels, *size), or a clear error."""
        channels = self.unet.config.concat_channels
        expected = (batch, channels, *size)
        if channels == 0:
            raise ValueError(
                "this LDM's U-Net takes no concatenated input (concat_channels = 0); drop concat."
            )
        if not isinstance(concat, Tensor) or tuple(concat.shape) != expected:
            got = tuple(concat.shape) if isinstance(concat, Tensor) else type(concat).__name__
            raise ValueError(
                f"this LDM concatenates {channels} channels to z_t: pass concat of shape "
                f"{expected} (the low-resolution image at the latent's size), got {got}."
            )
        return concat

    def encode_condition(self, condition: Sequence[str] | Tensor) -> dict[str, Tensor]:
        """tau_theta(y) as the U-Net's keywords: ``{"context": (B, M, d), "key_padding_mask"}``;
        ``condition``: B captions for a text model, layouts (B, N, 5) for a layout model."""
        if self.condition_encoder is None:
            raise ValueError("this LDM has no condition encoder (no text or layouts).")
        if isinstance(condition, Tensor):
            context, mask = self.condition_encoder(condition)
        else:
            context, mask = self.condition_encoder(list(condition))
        return {"context": context, "key_padding_mask": mask}

    def training_loss(
        self,
        z0: Tensor,
        labels: Tensor | None = None,
        drop_probability: float = 0.1,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        captions: Sequence[str] | None = None,
        concat: Tensor | None = None,
        weighting: str | None = None,
        min_snr_gamma: float = MIN_SNR_GAMMA,
        layouts: Tensor | None = None,
    ) -> Tensor:
        """L_LDM = E_{z_0, t, eps} ||eps - eps_theta(z_t, t, y)||^2 on scaled latents z0.

        ``z0``: (B, c, h, w) from :meth:`encode` (or a latent cache). ``labels``: (B,) class
        labels when class-conditional, dropped to the null class with ``drop_probability``;
        ``captions``: B strings when text-conditional, dropped to "" likewise, then encoded by
        tau_theta (whose weights get gradients too: it is trained jointly).
        ``concat``: (B, concat_channels, h, w) joined to z_t along channels when the U-Net
        has ``concat_channels`` (super-resolution: the low-resolution image at the latent's
        size, :func:`ldm_mini.superres.concat_condition`; semantic synthesis: the label map,
        :func:`ldm_mini.layouts.label_map_condition`); it is never dropped. ``layouts``
        (B, N, 5) when layout-conditional, dropped to the empty layout likewise.
        ``t`` (B,) and ``noise`` (like z0) are drawn with ``generator`` unless given.
        ``weighting``: None for the plain loss, "min_snr" for Min-SNR-``min_snr_gamma``
        weights (:meth:`~ldm_mini.diffusion.NoiseSchedule.min_snr_weight`).
        """
        if z0.ndim != 4 or z0.shape[1] != self.latent_channels:
            raise ValueError(
                f"z0 must be scaled latents (B, {self.latent_channels}, h, w) from encode(); got "
                f"{tuple(z0.shape)}. Encode images first (LatentDiffusion.encode)."
            )
        kwargs: dict[str, Any] = {}
        labels = self.class_labels_for_training(labels, drop_probability, generator)
        if labels is not None:
            kwargs["class_labels"] = labels
        captions = self.captions_for_training(captions, z0.shape[0], drop_probability, generator)
        if captions is not None:
            kwargs.update(self.encode_condition(captions))
        layouts = self.layouts_for_training(layouts, z0.shape[0], drop_probability, generator)
        if layouts is not None:
            kwargs.update(self.encode_condition(layouts))
        if concat is not None or self.unet.config.concat_channels:
            kwargs["concat"] = self._checked_concat(concat, z0.shape[0], tuple(z0.shape[-2:]))
        return self.schedule.training_loss(
            self.unet,
            z0,
            t=t,
            noise=noise,
            generator=generator,
            model_kwargs=kwargs,
            weighting=weighting,
            min_snr_gamma=min_snr_gamma,
        )

    # -- sampling ------------------------------------------------------------------------
    def _guided_by_encoder(self, condition, guidance: float) -> tuple[dict[str, Tensor], nn.Module]:
        """tau_theta(y) for the prompts or layouts (encoder in eval mode) and the U-Net wrapped
        in classifier-free guidance against the encoder's null condition."""
        encoder_was_training = self.condition_encoder.training
        self.condition_encoder.eval()
        try:
            kwargs = self.encode_condition(condition)
            null = self.encode_condition(self.condition_encoder.null_condition(1))
        finally:
            self.condition_encoder.train(encoder_was_training)
        return kwargs, ClassifierFreeGuidance(self.unet, guidance, null)

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        latent_size: tuple[int, int],
        *,
        sampler: str = "ddim",
        steps: int = 50,
        labels: Tensor | None = None,
        guidance: float = 1.0,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        return_trajectory: bool = False,
        progress: bool = False,
        eta: float = 0.0,
        prompts: Sequence[str] | None = None,
        concat: Tensor | None = None,
        denoiser: nn.Module | None = None,
        start_timestep: int | None = None,
        layouts: Tensor | None = None,
    ) -> tuple[Tensor, SamplerOutput]:
        """Draw z_0 with ``sampler`` ("ddpm", "ddim", "dpm++") and decode it once.

        Returns ``(images, output)``: images (N, C, f h, f w) clamped to [-1, 1], and the
        sampler's output (scaled latents; trajectories when ``return_trajectory``).
        ``labels`` (N,) for class-conditional models, ``prompts`` (N strings; "" is the
        unconditional prompt) for text-conditional ones, ``layouts`` (N, max_objects, 5) for
        layout-conditional ones (:func:`ldm_mini.layouts.layouts_to_tensor`; the empty
        layout is the unconditional one); ``guidance`` w is the
        classifier-free guidance scale (1: the conditional model alone). ``concat``
        (N, concat_channels, h, w) for U-Nets that concatenate an input to z_t (super-resolution;
        there is no null image, so those sample with w = 1). ``denoiser``: a wrapper of the
        U-Net to call instead of it (e.g. ``ldm_mini.superres.TiledDenoiser`` for large
        images); not combined with guidance. ``start_timestep`` (DDIM only): ``noise`` is x_t
        at the first visited step t <= start_timestep, not x_T (SDEdit; see
        :func:`~ldm_mini.samplers.ddim_sample`).
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}.")
        if start_timestep is not None and (sampler != "ddim" or noise is None):
            raise ValueError("start_timestep needs sampler 'ddim' and noise (x_t to start from).")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
        height, width = latent_size
        factor = self.unet.config.downsampling_factor
        if height % factor or width % factor:
            raise ValueError(
                f"latent size {latent_size} is not divisible by the U-Net's downsampling {factor}."
            )
        device = self.scale_factor.device
        model: nn.Module = self.unet
        kwargs: dict[str, Any] = {}
        if self.conditioning == "layout":
            if labels is not None or prompts is not None:
                raise ValueError("this LDM is layout-conditional: pass layouts only.")
            if not isinstance(layouts, Tensor) or layouts.ndim != 3 or len(layouts) != num_samples:
                raise ValueError(
                    f"this LDM is layout-conditional: pass layouts ({num_samples}, N, 5) "
                    "(ldm_mini.layouts.layouts_to_tensor)."
                )
            kwargs, model = self._guided_by_encoder(layouts, guidance)
        elif layouts is not None:
            raise ValueError("this LDM has no layout encoder: no layouts.")
        elif self.condition_encoder is not None:
            if labels is not None:
                raise ValueError("this LDM is text-conditional: pass prompts, not labels.")
            if prompts is None or isinstance(prompts, str) or len(prompts) != num_samples:
                raise ValueError(
                    f"this LDM is text-conditional: pass prompts, a list of {num_samples} strings "
                    '("" is the unconditional prompt).'
                )
            kwargs, model = self._guided_by_encoder(prompts, guidance)
        elif prompts is not None:
            raise ValueError("this LDM has no text encoder: no prompts.")
        elif self.num_classes is not None:
            if labels is None:
                raise ValueError(
                    f"this LDM is class-conditional: pass labels (N,) in [0, {self.num_classes})"
                    f" or all {self.num_classes} (the null class) for unconditional samples."
                )
            labels = labels.to(device)
            if labels.shape != (num_samples,):
                raise ValueError(
                    f"labels must have shape ({num_samples},), got {tuple(labels.shape)}."
                )
            kwargs["class_labels"] = labels
            null = {"class_labels": torch.full_like(labels, self.num_classes)}
            model = ClassifierFreeGuidance(self.unet, guidance, null)
        elif labels is not None or (guidance != 1.0 and concat is None):
            raise ValueError("this LDM is unconditional: no labels or guidance.")
        if concat is not None or self.unet.config.concat_channels:
            if guidance != 1.0:
                raise ValueError(
                    "classifier-free guidance needs a null condition; a concatenated input "
                    "(super-resolution) has none here: sample with guidance 1."
                )
            if model is not self.unet:
                raise ValueError("a concatenated input is implemented without labels or prompts.")
            kwargs["concat"] = self._checked_concat(concat, num_samples, (height, width)).to(device)
            check_finite(kwargs["concat"], "concatenated input (the low-resolution images)")
        if denoiser is not None:
            if model is not self.unet:
                raise ValueError("a denoiser wrapper is implemented without guidance (w = 1).")
            model = denoiser
        shape = (num_samples, self.latent_channels, height, width)
        if noise is not None:
            check_finite(noise, "starting latents (noise)")
        start = shape if noise is None else noise.to(device)
        common = dict(
            generator=generator,
            progress=progress,
            return_trajectory=return_trajectory,
            model_kwargs=kwargs,
            device=device,
        )
        was_training = self.unet.training
        self.unet.eval()
        try:
            if sampler == "ddpm":
                output = ddpm_sample(model, self.schedule, start, **common)
            elif sampler == "ddim":
                output = ddim_sample(
                    model, self.schedule, start, num_steps=steps, eta=eta,
                    start_timestep=start_timestep, **common,
                )  # fmt: skip
            else:
                output = dpm_solver_pp_sample(
                    model, self.schedule, start, num_steps=steps, **common
                )
        finally:
            self.unet.train(was_training)
        return self.decode(output.sample).clamp(-1, 1), output
