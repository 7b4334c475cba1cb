"""Building blocks shared by the autoencoder, the U-Net and the 2-D toy denoiser.

* :func:`group_norm`: GroupNorm with as many groups (up to 32) as divide the channels;
* :class:`Downsample` / :class:`Upsample`: halve / double H and W (CompVis ``model.py``);
* :func:`timestep_embedding`: the sinusoidal embedding of the diffusion timestep t.

The first three are taught with the autoencoder in notebook ``01_perceptual_autoencoder``
(:mod:`ldm_mini.autoencoder`) and reused by the U-Net of notebook ``05_unet``
(:mod:`ldm_mini.unet`). The timestep embedding first appears in notebook
``04_reverse_diffusion``, inside the toy denoiser of :mod:`ldm_mini.toy` (which calls it
``sinusoidal_embedding``), and is the exercise of notebook ``05_unet``. The blocks of one
model only (ResnetBlock, AttentionBlock; ResBlock) stay in that model's module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["Downsample", "Upsample", "group_norm", "timestep_embedding"]


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest of 32, 16, 8, 4, 2, 1 groups that divides ``channels``."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv, padded (0, 1, 0, 1) as CompVis does."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        # Asymmetric pad (right and bottom only): H -> H / 2 exactly for even H.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal timestep embedding (Transformer / DDPM): t (B,) -> float32 (B, dim).

    With half = dim / 2 and frequencies w_i = max_period^(-i / half), i = 0..half-1:
    emb(t) = [cos(t w_0), ..., cos(t w_{half-1}), sin(t w_0), ..., sin(t w_{half-1})], the
    order of guided-diffusion's ``timestep_embedding``. ``dim`` must be even; t may be integer
    or fractional (not bool or complex).
    """
    if torch.is_tensor(t) and (t.dtype == torch.bool or t.is_complex()):
        raise ValueError(f"t must hold integer or real timesteps, got dtype {t.dtype}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even int >= 2, got {dim!r}")
    if not torch.is_tensor(t) or t.ndim != 1:
        shape = getattr(t, "shape", None)
        got = f"shape {tuple(shape)}" if shape is not None else type(t).__name__
        raise ValueError(f"t must be a 1-D tensor (B,) of timesteps, got {got}")
    half = dim // 2
    # w_i = max_period^(-i / half) = exp(-ln(max_period) i / half)
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    # angle_{b,i} = t_b w_i
    angles = rearrange(t.float(), "b -> b 1") * rearrange(frequencies, "i -> 1 i")
    # emb(t)_i = cos(t w_i), emb(t)_{half + i} = sin(t w_i)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
