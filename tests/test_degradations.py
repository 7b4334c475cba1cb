"""Degradations for super-resolution: shapes, ranges, determinism, and known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ldm_mini.superres.degradations import (
    Bicubic,
    Blind,
    BlindRanges,
    blur,
    gaussian_kernel,
    jpeg,
    make_degradation,
    resize,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def images(batch: int = 3, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1] (a low-frequency pattern plus a little texture)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, size // 8, size // 8, generator=generator) * 2 - 1
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth + 0.1 * torch.randn(smooth.shape, generator=generator)).clamp(-1, 1)


def test_bicubic_shape_range_and_known_answers():
    x = images()
    low = Bicubic(4)(x)
    assert low.shape == (3, 3, 8, 8) and low.min() >= -1 and low.max() <= 1
    # antialiased bicubic: a constant image stays constant, and it is F.interpolate's
    flat = torch.full((1, 3, 16, 16), 0.25)
    assert torch.allclose(Bicubic(4)(flat), torch.full((1, 3, 4, 4), 0.25), atol=1e-6)
    expected = F.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True).clamp(-1, 1)
    assert torch.allclose(low, expected, atol=1e-6)
    # antialiasing matters: a checkerboard averages to grey instead of aliasing
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 2.0 - 1
    low = Bicubic(4)(checker[None, None].float())
    assert low.abs().max() < 0.05


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="not divisible by the factor 4"):
        Bicubic(4)(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Blind(4)(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="positive int"):
        Bicubic(0)
    with pytest.raises(ValueError, match="unknown degradation 'gaussian'"):
        make_degradation("gaussian")
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize(torch.zeros(1, 1, 8, 8), (4, 4), "lanczos")
    with pytest.raises(ValueError, match="jpeg_quality"):
        BlindRanges(jpeg_quality=(10, 100))


def test_gaussian_kernel_is_normalised_symmetric_and_rotates():
    kernel = gaussian_kernel(1.5, 1.5, 0.0, 11)
    assert kernel.shape == (11, 11) and abs(float(kernel.sum()) - 1) < 1e-6
    assert torch.allclose(kernel, kernel.T, atol=1e-7) and torch.allclose(kernel, kernel.flip(0))
    # an anisotropic kernel turned by 90 degrees is its transpose
    wide = gaussian_kernel(3.0, 0.7, 0.0, 11)
    assert torch.allclose(gaussian_kernel(3.0, 0.7, math.pi / 2, 11), wide.T, atol=1e-6)
    assert wide[5].sum() > wide[:, 5].sum()  # wide along x (columns)
    # blurring keeps the mean of a periodic-ish image and reduces its variation
    x = images(1, 3, 32)
    blurred = blur(x, kernel)
    assert blurred.shape == x.shape
    assert blurred.diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean()


def test_blind_is_deterministic_per_seed_and_per_image():
    x = images(4)
    blind = Blind(4)
    a, b = blind(x, seed=5), blind(x, seed=5)
    assert a.shape == (4, 3, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a, blind(x, seed=6))
    # image i of a batch degrades as it does alone (its choices depend on (seed, i) only)
    assert torch.equal(blind(x[:2], seed=5), a[:2])
    assert a.min() >= -1 and a.max() <= 1


def test_blind_parameters_stay_in_their_ranges():
    ranges = BlindRanges()
    blind = Blind(4, ranges)
    seen_orders, modes, isotropic = set(), set(), 0
    for seed in range(300):
        p = blind.parameters(seed)
        blur_params = p["blur"]
        if blur_params["sigma_x"] == blur_params["sigma_y"]:
            isotropic += 1
            assert ranges.blur_sigma[0] <= blur_params["sigma_x"] <= ranges.blur_sigma[1]
        else:
            for key in ("sigma_x", "sigma_y"):
                assert (
                    ranges.anisotropic_sigma[0] <= blur_params[key] <= ranges.anisotropic_sigma[1]
                )
            assert 0 <= blur_params["angle"] < math.pi
        assert (
            ranges.intermediate_scale[0] <= p["intermediate_scale"] <= ranges.intermediate_scale[1]
        )
        assert ranges.noise_std[0] <= p["noise_std"] <= ranges.noise_std[1]
        assert ranges.jpeg_quality[0] <= p["jpeg_quality"] <= ranges.jpeg_quality[1]
        assert p["order"][-1] == "jpeg" and sorted(p["order"][:3]) == ["blur", "noise", "resize"]
        seen_orders.add(tuple(p["order"]))
        modes.update(p["resize_modes"])
    assert len(seen_orders) == 6, "every order of blur, resize and noise occurs"
    assert modes == set(ranges.resize_modes)
    assert 100 < isotropic < 200, "about half the kernels are isotropic"


def test_blind_steps_show_each_stage():
    x = images(1, 3, 32)[0]
    states = Blind(4).steps(x, seed=3)
    names = [name for name, _ in states]
    assert names[0] == "input" and names[-1] == "jpeg" and len(names) == 5
    sizes = [tuple(state.shape[-2:]) for _, state in states]
    assert sizes[0] == (32, 32) and sizes[-1] == (8, 8)
    assert torch.equal(states[-1][1], Blind(4)(x[None], seed=3)[0])


def test_noise_and_jpeg_do_what_they_say():
    ranges = BlindRanges(
        blur_sigma=(0.1, 0.1), isotropic_probability=1.0, noise_std=(20.0, 20.0),
        jpeg_quality=(95, 95), intermediate_scale=(1.0, 1.0), resize_modes=("area",),
    )  # fmt: skip
    blind = Blind(4, ranges)
    for seed in range(6):  # the noise step adds noise of the drawn std, wherever it comes
        states = dict(blind.steps(torch.zeros(3, 64, 64), seed=seed))
        order = ["input", *blind.parameters(seed)["order"]]
        before = states[order[order.index("noise") - 1]]
        added = states["noise"] - before
        # 20 grey levels of 255 are 2 * 20 / 255 in [-1, 1]
        assert abs(float(added.std()) - 40 / 255) < 0.1 * 40 / 255
        colour = blind.parameters(seed)["colour_noise"]
        assert torch.equal(added[0], added[1]) != colour
    # lower JPEG quality loses more
    x = images(1, 3, 32)[0]
    errors = [float((jpeg(x, q) - x).abs().mean()) for q in (10, 50, 95)]
    assert errors[0] > errors[1] > errors[2]
    grey = images(1, 1, 32)[0]
    assert jpeg(grey, 80).shape == grey.shape
