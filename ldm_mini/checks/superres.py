"""Checkers for the exercises of notebook 08_super_resolution: the concatenation conditioning
and one step of the blind degradation (an anisotropic Gaussian blur kernel)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ldm_mini.checks._common import call, compare, passed
from ldm_mini.superres.concat import unet_input
from ldm_mini.superres.degradations import gaussian_kernel, resize


def check_unet_input(fn: Callable) -> None:
    """Exercise (08): ``fn(z_t, low)`` with z_t (B, c, h, w) and low-resolution images
    (B, C, h', w') in [-1, 1] -> [z_t ; y] (B, c + C, h, w): y resized (antialiased bicubic)
    only when its size differs from the latent's, then joined along channels after z_t."""
    name = "unet_input"
    generator = torch.Generator().manual_seed(801)
    for batch, c, size, channels, low_size in [
        (2, 4, 16, 3, 16),
        (3, 8, 8, 3, 8),
        (2, 4, 16, 3, 8),
    ]:
        z_t = torch.randn(batch, c, size, size, generator=generator)
        low = torch.rand(batch, channels, low_size, low_size, generator=generator) * 2 - 1
        got = call(name, fn, z_t.clone(), low.clone())
        expected = unet_input(z_t, low)
        where = f"z_t {tuple(z_t.shape)}, low {tuple(low.shape)}"
        resized = low if low_size == size else resize(low, (size, size), "bicubic")
        mistakes = [
            (
                torch.cat([resized, z_t], dim=1),
                "the order is [z_t ; y]: the noisy latent "
                "first, then the condition (the U-Net's first convolution expects it so)",
            )
        ]
        if low_size != size:
            nearest = torch.nn.functional.interpolate(low, size=(size, size), mode="nearest")
            mistakes.append(
                (
                    torch.cat([z_t, nearest], dim=1),
                    "resize y with antialiased bicubic "
                    "interpolation (ldm_mini.superres.degradations.resize), not nearest",
                )
            )
        compare(
            name,
            got,
            expected,
            where,
            mistakes=mistakes,
            atol=1e-5,
            hint="torch.cat([z_t, y], dim=1), y resized to the latent's h, w only if needed",
        )
    passed(name, "3 cases, with and without resizing")


def check_gaussian_kernel(fn: Callable) -> None:
    """Exercise (08): ``fn(sigma_x, sigma_y, angle, size)`` -> a (size, size) float32 kernel
    proportional to exp(-u^2 / (2 sigma_x^2) - v^2 / (2 sigma_y^2)) on the grid rotated by
    ``angle`` radians (u = cos x + sin y, v = -sin x + cos y), normalised to sum 1."""
    name = "gaussian_kernel"
    cases = [
        (1.0, 1.0, 0.0, 5),
        (2.0, 0.5, 0.0, 9),
        (2.0, 0.5, math.pi / 4, 9),
        (3.0, 1.0, 1.0, 11),
        (0.3, 0.3, 0.0, 3),
    ]
    for sigma_x, sigma_y, angle, size in cases:
        got = call(name, fn, sigma_x, sigma_y, angle, size)
        expected = gaussian_kernel(sigma_x, sigma_y, angle, size)
        radius = size // 2
        coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
        y, x = torch.meshgrid(coords, coords, indexing="ij")
        unnormalised = torch.exp(-(x**2) / (2 * sigma_x**2) - y**2 / (2 * sigma_y**2))
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = cos * x + sin * y, -sin * x + cos * y
        no_half = torch.exp(-(u**2) / sigma_x**2 - v**2 / sigma_y**2)
        mistakes = [
            (
                expected.T.contiguous(),
                "x and y are swapped: build the grid with "
                "torch.meshgrid(coords, coords, indexing='ij') as (y, x)",
            ),
            ((unnormalised / unnormalised.sum()).float(), "the grid is not rotated by the angle"),
            (
                gaussian_kernel(sigma_x, sigma_y, -angle, size),
                "the rotation goes the other way: u = cos x + sin y, v = -sin x + cos y",
            ),
            (
                (no_half / no_half.sum()).float(),
                "the exponent is -u^2 / (2 sigma_x^2) - v^2 / (2 "
                "sigma_y^2): the factor 2 is missing",
            ),
        ]
        if (
            isinstance(got, torch.Tensor)
            and got.shape == expected.shape
            and abs(float(got.double().sum()) - 1) > 1e-4
            and got.double().sum() > 0
        ):
            scaled = got.double() / got.double().sum()
            if torch.allclose(scaled.float(), expected, atol=1e-6):
                mistakes.insert(
                    0,
                    (
                        got,
                        "normalise the kernel so it sums to 1 (a blur keeps the mean brightness)",
                    ),
                )
        compare(
            name,
            got,
            expected,
            f"sigma_x = {sigma_x}, sigma_y = {sigma_y}, angle = {angle:.3f}, size = {size}",
            mistakes=mistakes,
            atol=1e-6,
            rtol=1e-4,
        )
    passed(name, f"{len(cases)} kernels, isotropic, anisotropic and rotated")
