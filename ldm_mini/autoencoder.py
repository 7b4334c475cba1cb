"""The perceptual autoencoder: the first stage of a Latent Diffusion Model.

LDM (Rombach et al., CVPR 2022, Sec. 3.1) does not diffuse pixels. An autoencoder first
compresses an image ``x`` of shape (C, H, W) into a latent ``z = E(x)`` of shape
(c, H/f, W/f), and a decoder maps it back, ``x_hat = D(z)``. The diffusion model then works
on ``z``, which is ``f^2 * C / c`` times smaller. The latent space is kept tame by one of two
light regularisers:

* **KL-reg** (:class:`AutoencoderKL`): the encoder outputs a diagonal Gaussian ``q(z|x)`` and
  a small KL penalty pulls it towards ``N(0, I)`` (as in a VAE, but weighted ~1e-6).
* **VQ-reg** (:class:`AutoencoderVQ`): a vector-quantisation layer snaps each latent vector
  to its nearest entry of a learned codebook (as in VQGAN), absorbed into the decoder.

The architecture follows CompVis ``taming-transformers`` / ``latent-diffusion``
(``Encoder``, ``Decoder``, ``AutoencoderKL``, ``VQModel``), shrunk so that it trains on a CPU
at 32x32 or 64x64 in minutes. Images are in [-1, 1].

Taught in notebooks ``01_perceptual_autoencoder`` (KL) and ``02_vector_quantization`` (VQ).
The losses that train it (L1 + LPIPS + patch GAN) live elsewhere; the decoder's
``last_layer`` is exposed for their adaptive GAN weight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ldm_mini.blocks import Downsample, Upsample, group_norm
from ldm_mini.configs import config_from_dict, is_int, is_number

__all__ = [
    "AutoencoderConfig",
    "AutoencoderKL",
    "AutoencoderOutput",
    "AutoencoderVQ",
    "AttentionBlock",
    "Decoder",
    "DiagonalGaussianDistribution",
    "Downsample",
    "Encoder",
    "ResnetBlock",
    "Upsample",
    "VectorQuantizer",
    "build_autoencoder",
    "group_norm",
    "latent_shape",
]

VALID_KINDS = ("kl", "vq")
VALID_FACTORS = (1, 2, 4, 8)
VALID_IN_CHANNELS = (1, 3)
DEFAULT_CHANNEL_MULT = (1, 2, 2, 4)


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass
class AutoencoderConfig:
    """Hyper-parameters of the first stage; JSON round trip via ``to_dict`` / ``from_dict``.

    ``kind`` "kl" or "vq"; ``in_channels`` 1 (grey) or 3 (RGB), images in [-1, 1];
    ``f`` the spatial downsampling factor (1, 2, 4 or 8); the latent is
    (``latent_channels``, H/f, W/f). ``channel_mult`` multiplies ``base_channels`` at each
    of the ``log2(f) + 1`` resolution levels; None takes ``(1, 2, 2, 4)[:log2(f) + 1]``.
    ``codebook_size`` (K) and ``beta`` (commitment weight) are used only by ``kind="vq"``.
    """

    kind: str = "kl"
    in_channels: int = 3
    f: int = 4
    latent_channels: int = 4
    base_channels: int = 64
    channel_mult: tuple[int, ...] | None = None
    num_res_blocks: int = 1
    attention: bool = False
    dropout: float = 0.0
    codebook_size: int = 512
    beta: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.channel_mult, list):
            self.channel_mult = tuple(self.channel_mult)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError, saying what to change, if any value is out of range."""
        if self.kind not in VALID_KINDS:
            raise ValueError(f"kind must be one of {VALID_KINDS}, got {self.kind!r}.")
        if not is_int(self.f) or self.f not in VALID_FACTORS:
            raise ValueError(
                f"f (the downsampling factor) must be one of {VALID_FACTORS}, got {self.f!r}. "
                "f is a power of two because each level halves the resolution once."
            )
        if not is_int(self.in_channels) or self.in_channels not in VALID_IN_CHANNELS:
            raise ValueError(
                f"in_channels must be 1 (grey) or 3 (RGB), got {self.in_channels!r}. "
                "Convert images with TensorImageDataset(..., channels=1 or 3)."
            )
        for name in ("latent_channels", "base_channels", "num_res_blocks", "codebook_size"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not isinstance(self.attention, bool):
            raise ValueError(f"attention must be True or False, got {self.attention!r}.")
        if not is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}.")
        if not is_number(self.beta) or self.beta < 0:
            raise ValueError(f"beta must be a non-negative float, got {self.beta!r}.")
        if self.channel_mult is not None:
            if not isinstance(self.channel_mult, tuple) or not all(
                is_int(m) and m >= 1 for m in self.channel_mult
            ):
                raise ValueError(
                    f"channel_mult must be a tuple of positive ints, got {self.channel_mult!r}."
                )
            if len(self.channel_mult) != self.num_levels:
                raise ValueError(
                    f"channel_mult has {len(self.channel_mult)} entries but f={self.f} needs "
                    f"log2(f) + 1 = {self.num_levels} (one per resolution level), e.g. "
                    f"{DEFAULT_CHANNEL_MULT[: self.num_levels]}; or pass None for that default."
                )

    @property
    def num_levels(self) -> int:
        """Number of resolution levels, ``log2(f) + 1`` (f=1 -> 1 level, f=8 -> 4)."""
        return int(math.log2(self.f)) + 1

    @property
    def resolved_channel_mult(self) -> tuple[int, ...]:
        """``channel_mult``, or the default ``(1, 2, 2, 4)[:num_levels]`` when it is None."""
        if self.channel_mult is not None:
            return tuple(self.channel_mult)
        return DEFAULT_CHANNEL_MULT[: self.num_levels]

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        if out["channel_mult"] is not None:
            out["channel_mult"] = list(out["channel_mult"])
        return out

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        """Build a config from ``to_dict()`` output (or a subset of it); rejects unknown keys."""
        return config_from_dict(cls, d, "AutoencoderConfig")


def latent_shape(config: AutoencoderConfig, image_size: int) -> tuple[int, int, int]:
    """Shape (c, image_size // f, image_size // f) of the latent of a square image."""
    if not is_int(image_size) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
    if image_size % config.f != 0:
        raise ValueError(
            f"image_size {image_size} is not divisible by f={config.f}; pad or resize images to "
            f"a multiple of {config.f} (e.g. pad 28x28 Fashion-MNIST to 32x32)."
        )
    side = image_size // config.f
    return (config.latent_channels, side, side)


def check_finite(x: Tensor, what: str) -> None:
    """Raise ValueError if ``x`` holds NaN or inf (once, where inputs enter a model)."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"the {what} hold {bad} NaN or inf value(s) out of {x.numel()}; the model would "
            "turn them into NaN everywhere. Check how they were loaded or computed."
        )


def _check_images(x: Tensor, config: AutoencoderConfig) -> None:
    """Raise ValueError unless x is (B, in_channels, H, W) with H and W multiples of f."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"expected a batch of images (B, {config.in_channels}, H, W), got {shape}; "
            "add a batch dimension with x.unsqueeze(0) for a single image."
        )
    channels = x.shape[1]
    if channels != config.in_channels:
        raise ValueError(
            f"expected {config.in_channels}-channel images (B, {config.in_channels}, H, W), "
            f"got shape {tuple(x.shape)}; convert with channels={config.in_channels} "
            f"(TensorImageDataset(..., channels={config.in_channels})) or build the "
            f"autoencoder with in_channels={channels}."
        )
    check_finite(x, "images")
    height, width = x.shape[-2:]
    if height % config.f or width % config.f:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the downsampling factor "
            f"f={config.f}; pad or resize images to a multiple of {config.f} "
            "(e.g. pad 28x28 Fashion-MNIST to 32x32)."
        )


def _check_latent(z: Tensor, config: AutoencoderConfig) -> None:
    """Raise ValueError unless z is (B, latent_channels, h, w)."""
    if not isinstance(z, Tensor) or z.dim() != 4 or z.shape[1] != config.latent_channels:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(
            f"expected a latent (B, {config.latent_channels}, h, w) "
            f"(latent_channels={config.latent_channels}), got {shape}; "
            "pass the output of encode_latent / the forward pass's .latent."
        )


# --------------------------------------------------------------------------------------
# Building blocks (CompVis "model.py", shrunk); group_norm, Downsample and Upsample, shared
# with the U-Net, live in ldm_mini.blocks
# --------------------------------------------------------------------------------------


class ResnetBlock(nn.Module):
    """(GroupNorm, SiLU, conv3x3) twice, plus a skip; (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # A 1x1 conv matches channel counts on the skip path when they change.
        self.skip = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        # y = skip(x) + F(x)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the h*w positions; (B, C, h, w) -> same shape."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        h = self.norm(x)
        q = rearrange(self.q(h), "b c h w -> b (h w) c")
        k = rearrange(self.k(h), "b c h w -> b (h w) c")
        v = rearrange(self.v(h), "b c h w -> b (h w) c")
        # Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V
        weights = torch.softmax(torch.einsum("bic,bjc->bij", q, k) / math.sqrt(q.shape[-1]), -1)
        out = torch.einsum("bij,bjc->bic", weights, v)
        out = rearrange(out, "b (h w) c -> b c h w", h=height, w=width)
        return x + self.proj_out(out)


def _mid_block(channels: int, attention: bool, dropout: float) -> nn.Sequential:
    """ResnetBlock [+ self-attention] + ResnetBlock at the lowest resolution."""
    layers: list[nn.Module] = [ResnetBlock(channels, channels, dropout)]
    if attention:
        layers.append(AttentionBlock(channels))
    layers.append(ResnetBlock(channels, channels, dropout))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """E: images (B, in_channels, H, W) -> features (B, out_channels, H/f, W/f).

    ``f = 2 ** (len(channel_mult) - 1)``: one stride-2 Downsample between consecutive levels.
    Level ``i`` has ``num_res_blocks`` ResnetBlocks with ``base_channels * channel_mult[i]``
    channels. No activation at the output (AutoencoderKL reads mean and log-variance from it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_channels: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int = 1,
        attention: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.f = 2 ** (len(channel_mult) - 1)
        self.conv_in = nn.Conv2d(in_channels, base_channels, kernel_size=3, padding=1)
        channels = base_channels
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            blocks = nn.Sequential()
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(channels, base_channels * mult, dropout))
                channels = base_channels * mult
            if level != len(channel_mult) - 1:
                blocks.append(Downsample(channels))
            self.down.append(blocks)
        self.mid = _mid_block(channels, attention, dropout)
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for blocks in self.down:
            h = blocks(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """D: latents (B, latent_channels, h, w) -> images (B, out_channels, h*f, w*f).

    The mirror of :class:`Encoder`: mid block at the lowest resolution, then the levels in
    reverse, each with ``num_res_blocks + 1`` ResnetBlocks (as CompVis) and a nearest-neighbour
    Upsample between levels. The output is unbounded (no tanh), as in CompVis.
    """

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        base_channels: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int = 1,
        attention: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.f = 2 ** (len(channel_mult) - 1)
        channels = base_channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(latent_channels, channels, kernel_size=3, padding=1)
        self.mid = _mid_block(channels, attention, dropout)
        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            blocks = nn.Sequential()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(channels, base_channels * channel_mult[level], dropout))
                channels = base_channels * channel_mult[level]
            if level != 0:
                blocks.append(Upsample(channels))
            self.up.append(blocks)
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for blocks in self.up:
            h = blocks(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the final conv, whose gradients set the adaptive GAN weight lambda."""
        return self.conv_out.weight


def _encoder_decoder(config: AutoencoderConfig, encoder_out: int) -> tuple[Encoder, Decoder]:
    common = dict(
        base_channels=config.base_channels,
        channel_mult=config.resolved_channel_mult,
        num_res_blocks=config.num_res_blocks,
        attention=config.attention,
        dropout=config.dropout,
    )
    encoder = Encoder(config.in_channels, encoder_out, **common)
    decoder = Decoder(config.latent_channels, config.in_channels, **common)
    return encoder, decoder


# --------------------------------------------------------------------------------------
# KL-regularised autoencoder
# --------------------------------------------------------------------------------------


class DiagonalGaussianDistribution:
    """q(z|x) = N(mean, diag(var)), from encoder moments (B, 2c, h, w).

    The first c channels are the mean, the last c the log-variance, clamped to [-30, 20]
    so that exp() neither underflows to 0 nor overflows.
    """

    def __init__(self, moments: Tensor) -> None:
        if moments.dim() < 2 or moments.shape[1] % 2 != 0:
            raise ValueError(
                f"moments must be (B, 2c, ...) with mean and logvar stacked on dim 1, "
                f"got shape {tuple(moments.shape)}."
            )
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        # sigma = exp(log sigma^2 / 2)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(
        self, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """z = mean + sigma * eps, eps ~ N(0, I) (reparameterisation; differentiable).

        ``noise``: eps itself (the mean's shape), e.g. drawn for a global batch; else drawn here.
        """
        if noise is not None:
            if noise.shape != self.mean.shape:
                raise ValueError(
                    f"noise has shape {tuple(noise.shape)}, the posterior {tuple(self.mean.shape)}"
                )
            eps = noise.to(self.mean.device, self.mean.dtype)
        else:
            eps = torch.randn(
                self.mean.shape,
                generator=generator,
                device=generator.device if generator is not None else self.mean.device,
                dtype=self.mean.dtype,
            ).to(self.mean.device)
        # z = mu + sigma * eps
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        """The most likely z, i.e. the mean."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q(z|x) || N(0, I)) per example, summed over c, h, w: shape (B,), >= 0."""
        # KL(q(z|x) || N(0, I)) = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2)
        elementwise = 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar)
        return elementwise.flatten(start_dim=1).sum(dim=1)


@dataclass
class AutoencoderOutput:
    """What a forward pass returns.

    ``reconstruction`` (B, C, H, W), roughly in [-1, 1]; ``latent`` the z fed to the decoder
    (B, c, h, w) (sampled for KL, quantised for VQ); ``regularization`` a scalar: the
    UNWEIGHTED KL (summed over latent elements, mean over the batch) or, for VQ,
    ``codebook_loss + beta * commitment_loss``; ``stats`` detached scalars for logging.
    """

    reconstruction: Tensor
    latent: Tensor
    regularization: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder (LDM "KL-f{f}"), after CompVis ``AutoencoderKL``.

    encode: x (B, C, H, W) in [-1, 1] -> q(z|x) over z (B, c, H/f, W/f);
    decode: z (B, c, h, w) -> x_hat (B, C, h*f, w*f).
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        if config.kind != "kl":
            raise ValueError(f"AutoencoderKL needs kind='kl', got {config.kind!r}.")
        self.config = config
        c = config.latent_channels
        self.encoder, self.decoder = _encoder_decoder(config, encoder_out=2 * c)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(c, c, kernel_size=1)

    def encode(self, x: Tensor) -> DiagonalGaussianDistribution:
        """x (B, C, H, W) -> posterior q(z|x) with mean, std of shape (B, c, H/f, W/f)."""
        _check_images(x, self.config)
        moments = self.quant_conv(self.encoder(x))
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, c, h, w) -> reconstruction (B, C, h*f, w*f)."""
        _check_latent(z, self.config)
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self,
        x: Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> AutoencoderOutput:
        """Encode, sample z ~ q(z|x) (or take its mean), decode; with the KL term.
        ``noise``: the posterior sample's eps (B, c, h, w), else drawn from ``generator``."""
        posterior = self.encode(x)
        z = posterior.sample(generator, noise) if sample_posterior else posterior.mode()
        reconstruction = self.decode(z)
        # L_reg = E_batch[ KL(q(z|x) || N(0, I)) ]  (unweighted; the loss scales it)
        kl = posterior.kl().mean()
        return AutoencoderOutput(
            reconstruction=reconstruction,
            latent=z,
            regularization=kl,
            stats={"kl": kl.detach()},
        )

    def encode_latent(self, x: Tensor) -> Tensor:
        """The latent a diffusion model trains on: the posterior mode (deterministic)."""
        return self.encode(x).mode()

    def decode_latent(self, z: Tensor) -> Tensor:
        """Decode a latent (e.g. one sampled by the diffusion model) to images."""
        return self.decode(z)

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's conv_out weight (for the adaptive GAN weight)."""
        return self.decoder.last_layer


# --------------------------------------------------------------------------------------
# VQ-regularised autoencoder
# --------------------------------------------------------------------------------------


class VectorQuantizer(nn.Module):
    """Snap each latent vector to its nearest codebook entry (van den Oord et al., 2017).

    Codebook ``embedding.weight``: (K, dim), initialised uniform(-1/K, 1/K). The buffer
    ``usage_count`` (K,) counts how often each code was picked in training mode since the
    last :meth:`reseed_dead_codes`.
    """

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("usage_count", torch.zeros(codebook_size))

    def nearest_codes(self, z: Tensor) -> Tensor:
        """Indices (B, h, w) of the nearest code (squared L2) to each vector of z (B, dim, h, w)."""
        batch, _, height, width = z.shape
        flat = rearrange(z, "b d h w -> (b h w) d")
        codebook = self.embedding.weight
        # ||z - e_k||^2 = ||z||^2 - 2 z . e_k + ||e_k||^2
        distances = (
            flat.pow(2).sum(dim=1, keepdim=True)
            - 2.0 * torch.einsum("nd,kd->nk", flat, codebook)
            + rearrange(codebook.pow(2).sum(dim=1), "k -> 1 k")
        )
        indices = distances.argmin(dim=1)
        return rearrange(indices, "(b h w) -> b h w", b=batch, h=height, w=width)

    def forward(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """z (B, dim, h, w) -> (z_q straight-through, losses, indices (B, h, w) long).

        losses: ``codebook_loss`` = ||sg[z] - z_q||^2 (moves the codes; mean over elements),
        ``commitment_loss`` = ||z - sg[z_q]||^2 (moves the encoder). Neither is weighted.
        """
        if z.dim() != 4 or z.shape[1] != self.dim:
            raise ValueError(f"expected z of shape (B, {self.dim}, h, w), got {tuple(z.shape)}.")
        indices = self.nearest_codes(z.detach())
        z_q = self.lookup(indices)
        # L_codebook = ||sg[z] - z_q||^2 ;  L_commit = ||z - sg[z_q]||^2
        losses = {
            "codebook_loss": F.mse_loss(z_q, z.detach()),
            "commitment_loss": F.mse_loss(z, z_q.detach()),
        }
        if self.training:
            with torch.no_grad():
                self.usage_count += torch.bincount(
                    indices.flatten(), minlength=self.codebook_size
                ).to(self.usage_count.dtype)
        # Straight-through estimator: forward value z_q, gradient dL/dz := dL/dz_q
        z_q = z + (z_q - z).detach()
        return z_q, losses, indices

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors for indices (B, h, w) -> (B, dim, h, w)."""
        if indices.dim() != 3:
            raise ValueError(f"expected indices of shape (B, h, w), got {tuple(indices.shape)}.")
        return rearrange(self.embedding(indices), "b h w d -> b d h w")

    @staticmethod
    def perplexity(indices: Tensor, codebook_size: int) -> Tensor:
        """exp(entropy of the code histogram): 1 if one code is used, n if n equally often."""
        counts = torch.bincount(indices.flatten(), minlength=codebook_size).float()
        probs = counts / counts.sum().clamp_min(1.0)
        # PPL = exp(-sum_k p_k log p_k), with 0 log 0 = 0
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
        return torch.exp(entropy)

    @torch.no_grad()
    def reseed_dead_codes(
        self,
        z: Tensor,
        min_count: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> int:
        """Replace codes used fewer than ``min_count`` times by random encoder outputs.

        z (B, dim, h, w): a batch of pre-quantisation latents to draw from (distinct vectors
        when there are enough), plus noise of 1e-3 times their std so that copies differ.
        Resets ``usage_count`` to zero and returns the number of codes reseeded.
        Deterministic given ``generator``.
        """
        if z.dim() != 4 or z.shape[1] != self.dim:
            raise ValueError(f"expected z of shape (B, {self.dim}, h, w), got {tuple(z.shape)}.")
        dead = torch.nonzero(self.usage_count < min_count).flatten()
        num_dead = int(dead.numel())
        if num_dead > 0:
            candidates = rearrange(z.detach(), "b d h w -> (b h w) d")
            rng_device = generator.device if generator is not None else candidates.device
            if candidates.shape[0] >= num_dead:
                pick = torch.randperm(candidates.shape[0], generator=generator, device=rng_device)
                pick = pick[:num_dead]
            else:
                pick = torch.randint(
                    candidates.shape[0], (num_dead,), generator=generator, device=rng_device
                )
            noise = torch.randn(
                (num_dead, self.dim), generator=generator, device=rng_device, dtype=z.dtype
            )
            scale = 1e-3 * candidates.std().clamp_min(1e-6)
            new_codes = candidates[pick.to(candidates.device)] + scale * noise.to(z.device)
            weight = self.embedding.weight
            weight[dead.to(weight.device)] = new_codes.to(weight.device, weight.dtype)
        self.usage_count.zero_()
        return num_dead


class AutoencoderVQ(nn.Module):
    """VQ-regularised autoencoder (LDM "VQ-f{f}"), after CompVis ``VQModel``.

    ``encode`` gives the pre-quantisation latent; ``quantize`` snaps it to the codebook;
    ``decode`` maps a (quantised) latent to images. As in LDM's ``VQModelInterface``, the
    diffusion model works on the *pre-quantisation* latent: ``encode_latent`` returns it and
    ``decode_latent`` quantises before decoding, so the quantiser belongs to the decoder.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        if config.kind != "vq":
            raise ValueError(f"AutoencoderVQ needs kind='vq', got {config.kind!r}.")
        self.config = config
        c = config.latent_channels
        self.encoder, self.decoder = _encoder_decoder(config, encoder_out=c)
        self.quant_conv = nn.Conv2d(c, c, kernel_size=1)
        self.quantizer = VectorQuantizer(config.codebook_size, c, config.beta)
        self.post_quant_conv = nn.Conv2d(c, c, kernel_size=1)

    def encode(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> pre-quantisation latent z (B, c, H/f, W/f)."""
        _check_images(x, self.config)
        return self.quant_conv(self.encoder(x))

    def quantize(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """z (B, c, h, w) -> (z_q, {"codebook_loss", "commitment_loss"}, indices (B, h, w))."""
        _check_latent(z, self.config)
        return self.quantizer(z)

    def decode(self, z_q: Tensor) -> Tensor:
        """Quantised latent (B, c, h, w) -> reconstruction (B, C, h*f, w*f)."""
        _check_latent(z_q, self.config)
        return self.decoder(self.post_quant_conv(z_q))

    def forward(
        self,
        x: Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> AutoencoderOutput:
        """Encode, quantise, decode. ``sample_posterior``, ``generator``, ``noise`` are ignored."""
        del sample_posterior, generator, noise  # VQ is deterministic; a shared interface.
        z = self.encode(x)
        z_q, losses, indices = self.quantize(z)
        reconstruction = self.decode(z_q)
        # L_reg = ||sg[z] - z_q||^2 + beta * ||z - sg[z_q]||^2
        regularization = losses["codebook_loss"] + self.config.beta * losses["commitment_loss"]
        counts = torch.bincount(indices.flatten(), minlength=self.config.codebook_size)
        stats = {
            "codebook_loss": losses["codebook_loss"].detach(),
            "commitment_loss": losses["commitment_loss"].detach(),
            "perplexity": VectorQuantizer.perplexity(indices, self.config.codebook_size),
            "codebook_usage": (counts > 0).float().mean(),
        }
        return AutoencoderOutput(
            reconstruction=reconstruction,
            latent=z_q,
            regularization=regularization,
            stats=stats,
        )

    def encode_latent(self, x: Tensor) -> Tensor:
        """The latent a diffusion model trains on: z *before* quantisation (B, c, h, w)."""
        return self.encode(x)

    def decode_latent(self, z: Tensor) -> Tensor:
        """Quantise z (e.g. sampled by the diffusion model) to the codebook, then decode."""
        z_q, _, _ = self.quantize(z)
        return self.decode(z_q)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Codebook indices (B, h, w) -> images (B, C, h*f, w*f)."""
        return self.decode(self.quantizer.lookup(indices))

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's conv_out weight (for the adaptive GAN weight)."""
        return self.decoder.last_layer


def build_autoencoder(config: AutoencoderConfig | dict) -> AutoencoderKL | AutoencoderVQ:
    """An AutoencoderKL or AutoencoderVQ, by ``config.kind``; a dict goes through from_dict."""
    if isinstance(config, dict):
        config = AutoencoderConfig.from_dict(config)
    if not isinstance(config, AutoencoderConfig):
        raise ValueError(
            f"expected an AutoencoderConfig or a dict, got {type(config).__name__}; "
            "build one with AutoencoderConfig(kind='kl', ...)."
        )
    config.validate()
    if config.kind == "kl":
        return AutoencoderKL(config)
    return AutoencoderVQ(config)


# the modules that compute the latent z from x (the rest, post_quant_conv and decoder, decode)
LATENT_PARTS = ("encoder", "quant_conv", "quantizer")


def latent_parts_sha256(model: torch.nn.Module) -> str:
    """sha256 of the weights that compute the latent (:data:`LATENT_PARTS`, as float32 bytes):
    two autoencoders with the same value encode every image to the same latent."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.split(".", 1)[0] in LATENT_PARTS:
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
