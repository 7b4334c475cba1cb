"""Degradations that make low-resolution inputs for super-resolution: bicubic and blind.

Taught in notebook 08_super_resolution. Images are tensors (B, C, H, W) in [-1, 1]; a
degradation returns (B, C, H / factor, W / factor) in [-1, 1] and is a pure function of the
images and a seed: image ``i`` of a batch draws its random choices from
``numpy.random.default_rng([seed, i])``, so a batch, a sub-batch or one image degrade alike.

* :class:`Bicubic`: the paper's LDM-SR setting (as SR3): bicubic downsampling by ``factor``
  with antialiasing (``torch.nn.functional.interpolate(..., mode="bicubic",
  antialias=True)``, the kernel widened by ``factor`` like MATLAB's ``imresize``).
* :class:`Blind`: the LDM-BSR setting in the spirit of BSRGAN (Zhang et al. 2021), whose
  degradation pipeline the paper uses: blur, a two-step resize with random interpolation
  modes, and Gaussian noise, in a random order, then JPEG compression. The ranges, in
  :class:`BlindRanges`, are documented there; :meth:`Blind.parameters` tells what an image
  got and :meth:`Blind.steps` returns every intermediate image (notebook 08 shows them).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import Tensor

RESIZE_MODES = ("bicubic", "bilinear", "area", "nearest")


def _check_images(images: Tensor, factor: int) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            "images must be a float tensor (B, C, H, W) in [-1, 1], got "
            f"{getattr(images, 'dtype', type(images).__name__)} of shape "
            f"{tuple(getattr(images, 'shape', ()))}"
        )
    height, width = images.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the factor {factor}: crop it to a "
            f"multiple of {factor} first"
        )


def _check_factor(factor: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")


def resize(images: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize (B, C, H, W) to ``size`` with one of :data:`RESIZE_MODES` (antialiased when
    shrinking with bicubic or bilinear), clamped to [-1, 1]."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {RESIZE_MODES}")
    options: dict[str, Any] = {}
    if mode in ("bicubic", "bilinear"):
        options = {"align_corners": False, "antialias": True}
    return F.interpolate(images, size=size, mode=mode, **options).clamp(-1.0, 1.0)


def bicubic_downsample(images: Tensor, factor: int = 4) -> Tensor:
    """(B, C, H, W) -> (B, C, H / factor, W / factor): antialiased bicubic, in [-1, 1]."""
    _check_factor(factor)
    _check_images(images, factor)
    height, width = images.shape[-2:]
    return resize(images, (height // factor, width // factor), "bicubic")


@dataclass(frozen=True)
class Bicubic:
    """LDM-SR's degradation: antialiased bicubic downsampling by ``factor`` (no randomness;
    the seed is accepted so every degradation is called alike)."""

    factor: int = 4

    def __post_init__(self) -> None:
        _check_factor(self.factor)

    def __call__(self, images: Tensor, seed: int = 0) -> Tensor:
        return bicubic_downsample(images, self.factor)


def gaussian_kernel(sigma_x: float, sigma_y: float, angle: float, size: int) -> Tensor:
    """A normalised 2-D Gaussian kernel (size, size), axes rotated by ``angle`` radians."""
    if size % 2 == 0 or size < 1:
        raise ValueError(f"kernel size must be odd and positive, got {size}")
    radius = size // 2
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    cos, sin = math.cos(angle), math.sin(angle)
    # rotate the grid into the kernel's axes: u along sigma_x, v along sigma_y
    u, v = cos * x + sin * y, -sin * x + cos * y
    # k(u, v) proportional to exp(-u^2 / (2 sigma_x^2) - v^2 / (2 sigma_y^2))
    kernel = torch.exp(-(u**2) / (2 * sigma_x**2) - v**2 / (2 * sigma_y**2))
    return (kernel / kernel.sum()).float()


def blur(images: Tensor, kernel: Tensor) -> Tensor:
    """Convolve every channel with ``kernel`` (k, k), reflect-padded: same size out."""
    channels = images.shape[1]
    radius = kernel.shape[-1] // 2
    if radius >= min(images.shape[-2:]):
        raise ValueError(
            f"a {kernel.shape[-1]}x{kernel.shape[-1]} kernel is too large for "
            f"{tuple(images.shape[-2:])} images"
        )
    weight = kernel.to(images).expand(channels, 1, *kernel.shape)
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    return F.conv2d(padded, weight, groups=channels)


def jpeg(image: Tensor, quality: int) -> Tensor:
    """JPEG-compress one image (C, H, W) in [-1, 1] at ``quality`` (1-95) with PIL and decode."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = rearrange(array, "c h w -> h w c").numpy()
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=int(quality))
    decoded = np.asarray(Image.open(buffer).convert(picture.mode), dtype=np.float32)
    if decoded.ndim == 2:
        decoded = decoded[..., None]
    tensor = rearrange(torch.from_numpy(decoded.copy()), "h w c -> c h w")
    return (tensor / 127.5 - 1.0).to(image)


@dataclass(frozen=True)
class BlindRanges:
    """The ranges the blind degradation draws from, uniformly unless stated (for factor 4;
    blur widths and the intermediate scale are given relative to the final factor).

    * blur: isotropic with probability ``isotropic_probability``, sigma in ``blur_sigma``
      pixels; else anisotropic with sigma_x, sigma_y in ``anisotropic_sigma`` and a random
      angle in [0, pi); kernel size ``blur_kernel`` (odd).
    * resize: first to ``intermediate_scale`` times the final size (a factor in [1, 2]:
      between the target and twice it), then to the final size; each step's mode drawn from
      ``resize_modes``.
    * noise: Gaussian, std in ``noise_std`` grey levels of 255 (colour noise, independent per
      channel, with probability ``colour_noise_probability``, else the same for all channels).
    * JPEG: quality in ``jpeg_quality`` (integers, inclusive), always last.
    """

    isotropic_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.8)
    anisotropic_sigma: tuple[float, float] = (0.5, 3.0)
    blur_kernel: int = 11
    intermediate_scale: tuple[float, float] = (1.0, 2.0)
    resize_modes: tuple[str, ...] = ("bicubic", "bilinear", "area")
    noise_std: tuple[float, float] = (1.0, 25.0)
    colour_noise_probability: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        for name in ("blur_sigma", "anisotropic_sigma", "intermediate_scale", "noise_std"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high")
        if self.intermediate_scale[0] < 1.0:
            raise ValueError("intermediate_scale must be >= 1 (at least the final size)")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 95:
            raise ValueError("jpeg_quality must be (low, high) within [1, 95]")
        unknown = [mode for mode in self.resize_modes if mode not in RESIZE_MODES]
        if unknown or not self.resize_modes:
            raise ValueError(f"resize_modes must be a non-empty subset of {RESIZE_MODES}")


@dataclass(frozen=True)
class Blind:
    """LDM-BSR's degradation: blur, two-step resize, noise (random order), then JPEG."""

    factor: int = 4
    ranges: BlindRanges = field(default_factory=BlindRanges)

    def __post_init__(self) -> None:
        _check_factor(self.factor)

    def parameters(self, seed: int, index: int = 0) -> dict[str, Any]:
        """The random choices for image ``index`` of a batch degraded with ``seed``."""
        r = self.ranges
        rng = np.random.default_rng([seed, index])
        if rng.random() < r.isotropic_probability:
            sigma = float(rng.uniform(*r.blur_sigma))
            blur_params = {"sigma_x": sigma, "sigma_y": sigma, "angle": 0.0}
        else:
            blur_params = {
                "sigma_x": float(rng.uniform(*r.anisotropic_sigma)),
                "sigma_y": float(rng.uniform(*r.anisotropic_sigma)),
                "angle": float(rng.uniform(0, math.pi)),
            }
        order = [str(step) for step in rng.permutation(["blur", "resize", "noise"])]
        return {
            "order": order + ["jpeg"],
            "blur": blur_params,
            "intermediate_scale": float(rng.uniform(*r.intermediate_scale)),
            "resize_modes": [str(m) for m in rng.choice(r.resize_modes, size=2)],
            "noise_std": float(rng.uniform(*r.noise_std)),
            "colour_noise": bool(rng.random() < r.colour_noise_probability),
            "noise_seed": int(rng.integers(2**31)),
            "jpeg_quality": int(rng.integers(r.jpeg_quality[0], r.jpeg_quality[1] + 1)),
        }

    def steps(self, image: Tensor, seed: int, index: int = 0) -> list[tuple[str, Tensor]]:
        """Every intermediate state of one image (C, H, W): [("input", x), (step, x), ...]."""
        if image.ndim != 3:
            raise ValueError(f"steps() takes one image (C, H, W), got {tuple(image.shape)}")
        _check_images(image[None], self.factor)
        params = self.parameters(seed, index)
        height, width = image.shape[-2:]
        final = (height // self.factor, width // self.factor)
        scale = params["intermediate_scale"]
        middle = (max(final[0], round(final[0] * scale)), max(final[1], round(final[1] * scale)))
        x = image[None]
        states = [("input", image)]
        resized = 0
        for step in params["order"]:
            if step == "blur":
                b = params["blur"]
                kernel = gaussian_kernel(
                    b["sigma_x"], b["sigma_y"], b["angle"], self.ranges.blur_kernel
                )
                x = blur(x, kernel)
            elif step == "resize":
                # two resizes in a row: to the intermediate size, then to the final one
                x = resize(x, middle, params["resize_modes"][0])
                x = resize(x, final, params["resize_modes"][1])
                resized += 1
            elif step == "noise":
                generator = torch.Generator().manual_seed(params["noise_seed"])
                channels = x.shape[1] if params["colour_noise"] else 1
                noise = torch.randn(1, channels, *x.shape[-2:], generator=generator).to(x)
                # sigma grey levels of 255 are 2 sigma / 255 in [-1, 1]
                x = (x + noise * (2.0 * params["noise_std"] / 255.0)).clamp(-1.0, 1.0)
            else:
                x = jpeg(x[0], params["jpeg_quality"])[None]
            states.append((step, x[0]))
        assert resized == 1 and tuple(x.shape[-2:]) == final, "the pipeline must resize once"
        return states

    def __call__(self, images: Tensor, seed: int = 0) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, C, H / factor, W / factor) in [-1, 1]."""
        _check_images(images, self.factor)
        return torch.stack(
            [self.steps(image, seed, index)[-1][1] for index, image in enumerate(images)]
        )


DEGRADATIONS = {"bicubic": Bicubic, "blind": Blind}


def make_degradation(name: str, factor: int = 4) -> Bicubic | Blind:
    """``"bicubic"`` or ``"blind"`` with ``factor``; a clear error for other names."""
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; choose one of {sorted(DEGRADATIONS)}")
    return DEGRADATIONS[name](factor)
