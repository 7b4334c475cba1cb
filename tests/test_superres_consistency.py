"""Back-projection: an upscaled image made consistent with its bicubic-degraded input."""

from __future__ import annotations

import pytest
import torch

from ldm_mini.superres.consistency import (
    back_project,
    bicubic_upsample,
    check_iterations,
    check_projectable,
    consistency_error,
)
from ldm_mini.superres.degradations import bicubic_downsample


def smooth_images(seed: int, size: int = 32) -> torch.Tensor:
    """Photo-like test images in [-0.6, 0.6]: smooth colour fields plus a little texture."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(2, 3, 4, 4, generator=generator) - 0.5
    fine = 0.1 * (torch.rand(2, 3, size, size, generator=generator) - 0.5)
    return (bicubic_upsample(coarse, size // 4) + fine).clamp(-0.6, 0.6)


def test_a_colour_shift_is_removed_exactly_and_a_consistent_image_is_left_alone():
    truth = smooth_images(0)
    low = bicubic_downsample(truth, 4)
    # a consistent image is a fixed point, bit for bit
    assert torch.equal(back_project(truth, low, 4, iterations=3), truth)
    # a constant colour shift c: D(x + c) = D(x) + c and U(-c) = -c, so one step undoes it
    shifted = truth + torch.tensor([0.2, -0.1, 0.05])[:, None, None]
    assert consistency_error(shifted, low).min() > 0.05
    corrected = back_project(shifted, low, 4, iterations=1)
    torch.testing.assert_close(corrected, truth, atol=1e-5, rtol=0)
    assert torch.equal(back_project(shifted, low, 4, iterations=0), shifted)


def test_iterations_bring_the_output_closer_to_its_input_and_keep_the_detail():
    truth = smooth_images(1)
    low = bicubic_downsample(truth, 4)
    # an upscaler's guess: the right fine detail on the wrong (blurred, tinted) low frequencies
    detail = truth - bicubic_upsample(bicubic_downsample(truth, 4), 4)
    guess = (0.7 * bicubic_upsample(low, 4) + 0.1 + detail).clamp(-1, 1)
    errors = [float(consistency_error(back_project(guess, low, 4, k), low).max()) for k in range(4)]
    assert errors[0] > 0.05
    assert errors[1] < errors[0] / 5, errors
    assert errors[3] <= errors[1] + 1e-6, errors
    # the correction is low-frequency: it does not wipe out the detail the guess carries
    projected = back_project(guess, low, 4, 3)
    before = (guess - truth).pow(2).mean()
    after = (projected - truth).pow(2).mean()
    assert after < before / 10, (float(before), float(after))
    assert (projected - bicubic_upsample(low, 4)).abs().mean() > detail.abs().mean() / 2


def test_bicubic_upsample_stays_in_range_and_scales_by_the_factor():
    low = torch.rand(2, 3, 5, 7) * 2 - 1
    up = bicubic_upsample(low, 4)
    assert up.shape == (2, 3, 20, 28) and up.min() >= -1 and up.max() <= 1


def test_bad_arguments_are_refused():
    low = torch.zeros(1, 3, 8, 8)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="int >= 0"):
            check_iterations(bad)
        with pytest.raises(ValueError, match="int >= 0"):
            back_project(torch.zeros(1, 3, 32, 32), low, 4, bad)
    with pytest.raises(AssertionError, match="not 4x the inputs"):
        back_project(torch.zeros(1, 3, 16, 16), low, 4, 1)
    with pytest.raises(AssertionError, match="not 4x the inputs"):
        back_project(torch.zeros(2, 3, 32, 32), low, 4, 1)
    with pytest.raises(ValueError, match="tensors"):
        back_project([[0.0]], low, 4, 1)
    check_projectable("bicubic")
    with pytest.raises(ValueError, match="unknown at test time"):
        check_projectable("blind")
