"""Diffusion pictures: schedules, noising strips, trajectories and animations."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from ldm_mini import viz

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# DDPM's linear schedule, computed here so these tests do not depend on ldm_mini.diffusion
LINEAR_ALPHAS_CUMPROD = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)


class RecordingSchedule:
    """Duck-typed stand-in for NoiseSchedule: the closed-form q_sample, remembering its noise."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def q_sample(self, x0, t, noise=None, generator=None):
        self.calls.append((t, noise))
        abar = LINEAR_ALPHAS_CUMPROD[t].float().reshape(-1, *([1] * (x0.ndim - 1)))
        # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def image_batch(seed: int, shape=(4, 3, 8, 8)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_plot_schedules_three_panels_one_curve_per_schedule():
    zero_terminal = LINEAR_ALPHAS_CUMPROD.clone()
    zero_terminal[-1] = 0.0
    figure = viz.plot_schedules({"linear": LINEAR_ALPHAS_CUMPROD, "zero snr": zero_terminal})
    assert len(figure.axes) == 3 and all(len(axis.lines) == 2 for axis in figure.axes)
    signal, noise, log_snr = (axis.lines[0].get_ydata() for axis in figure.axes)
    assert np.allclose(signal, LINEAR_ALPHAS_CUMPROD.sqrt().numpy())
    assert np.allclose(signal**2 + noise**2, 1.0)
    abar = LINEAR_ALPHAS_CUMPROD[500].item()
    assert log_snr[500] == pytest.approx(math.log10(abar / (1 - abar)))
    clipped = figure.axes[2].lines[1].get_ydata()
    assert np.isfinite(clipped).all() and clipped[-1] == pytest.approx(-10.0)  # SNR 0, clipped


def test_plot_schedules_draws_into_given_axes_and_rejects_bad_input():
    figure, axes = plt.subplots(2, 3)
    assert viz.plot_schedules({"linear": LINEAR_ALPHAS_CUMPROD}, axes=axes[1]) is figure
    assert [len(axis.lines) for axis in axes.flat] == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="3 matplotlib axes"):
        viz.plot_schedules({"linear": LINEAR_ALPHAS_CUMPROD}, axes=axes[0, :2])
    with pytest.raises(ValueError, match="non-empty dict"):
        viz.plot_schedules({})
    with pytest.raises(ValueError, match=r"must be 1-D \(T,\)"):
        viz.plot_schedules({"bad": torch.ones(2, 3)})
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        viz.plot_schedules({"bad": torch.tensor([1.5, 0.5])})


def test_noising_strip_uses_one_noise_for_every_t():
    schedule = RecordingSchedule()
    x0 = image_batch(0)[0]
    figure = viz.noising_strip(
        x0, schedule, [0, 250, 999], generator=torch.Generator().manual_seed(7)
    )
    assert [axis.get_title() for axis in figure.axes] == ["t = 0", "t = 250", "t = 999"]
    assert all(len(axis.images) == 1 for axis in figure.axes)
    t, noise = schedule.calls[0]
    assert t.tolist() == [0, 250, 999] and t.dtype == torch.long
    expected = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(row, expected) for row in noise)
    # RGB in [-1, 1] -> uint8; at t = 999 the picture is (almost) pure noise
    last = figure.axes[2].images[0].get_array()
    clean = (schedule.q_sample(x0[None], torch.tensor([999]), noise=expected[None])[0] + 1) * 127.5
    assert last.shape == (8, 8, 3)
    assert np.abs(last - clean.clamp(0, 255).permute(1, 2, 0).numpy()).max() <= 1


def test_noising_strip_latent_channels():
    latent = image_batch(1, (1, 4, 6, 6))[0]
    default = viz.noising_strip(latent, RecordingSchedule(), [10, 900])
    image = default.axes[0].images[0]
    assert image.get_array().shape == (6, 6) and image.get_cmap().name == "RdBu_r"
    low, high = image.get_clim()
    assert low == -high  # one symmetric colour scale
    rgb = viz.noising_strip(latent, RecordingSchedule(), [10, 900], channels=[1, 2, 3])
    assert rgb.axes[1].images[0].get_array().shape == (6, 6, 3)
    grey = viz.noising_strip(image_batch(2, (1, 1, 6, 6))[0], RecordingSchedule(), [5])
    assert grey.axes[0].images[0].get_cmap().name == "gray"
    with pytest.raises(ValueError, match=r"channels \[4\] do not exist"):
        viz.noising_strip(latent, RecordingSchedule(), [1], channels=4)
    with pytest.raises(ValueError, match="1 channel .* or 3"):
        viz.noising_strip(latent, RecordingSchedule(), [1], channels=[0, 1])


def test_noising_strip_rejects_bad_input():
    x0 = image_batch(0)[0]
    with pytest.raises(ValueError, match=r"x0 must be one image, a tensor \(C, H, W\)"):
        viz.noising_strip(x0[None], RecordingSchedule(), [1])
    with pytest.raises(ValueError, match="timesteps is empty"):
        viz.noising_strip(x0, RecordingSchedule(), [])
    with pytest.raises(ValueError, match="timesteps must be integers"):
        viz.noising_strip(x0, RecordingSchedule(), [1.5])
    with pytest.raises(ValueError, match="timesteps must be >= 0"):
        viz.noising_strip(x0, RecordingSchedule(), [-1])
    with pytest.raises(TypeError, match="q_sample"):
        viz.noising_strip(x0, object(), [1])


def test_trajectory_grid_columns_blocks_and_labels():
    # a sampler's output: 20 model calls, trajectory x_T .. sample (21), one x0 per call (20)
    trajectory = [image_batch(seed, (3, 1, 8, 8)) for seed in range(21)]
    predictions = [image_batch(100 + seed, (3, 1, 8, 8)) for seed in range(20)]
    timesteps = list(range(950, -1, -50))
    figure = viz.trajectory_grid(trajectory, timesteps, predictions, n_images=2, n_columns=5)
    assert len(figure.axes) == 10  # 2 blocks x 5 columns
    top = figure.axes[:5]
    assert [axis.get_title() for axis in top] == [
        "t = 950",
        "t = 700",
        "t = 450",
        "t = 200",
        "sample",
    ]
    assert [len(axis.images) for axis in figure.axes] == [1] * 9 + [0]  # no x0 after the sample
    strip = top[0].images[0].get_array()
    assert strip.shape == (2 * (8 + 1) + 1, 8 + 2)  # two stacked grey images, 1-pixel padding
    expected = viz.make_grid(trajectory[0][:2], ncols=1, padding=1)[..., 0]
    assert np.array_equal(strip, expected)
    short = viz.trajectory_grid(trajectory[:3])  # fewer steps than columns: all of them
    assert [axis.get_title() for axis in short.axes] == ["step 0", "step 1", "step 2"]


def test_trajectory_grid_rejects_bad_input():
    trajectory = [image_batch(seed) for seed in range(4)]
    with pytest.raises(ValueError, match="non-empty list of image batches"):
        viz.trajectory_grid([])
    with pytest.raises(ValueError, match=r"trajectory\[1\] has shape"):
        viz.trajectory_grid([trajectory[0], trajectory[1][:2]])
    with pytest.raises(ValueError, match="4 channels; only 1 .* or 3"):
        viz.trajectory_grid([torch.zeros(2, 4, 8, 8)])
    with pytest.raises(ValueError, match=r"must be a non-empty image batch \(B, C, H, W\)"):
        viz.trajectory_grid([torch.zeros(3, 8, 8)])
    with pytest.raises(ValueError, match="n_columns must be an int >= 2"):
        viz.trajectory_grid(trajectory, n_columns=1)
    with pytest.raises(ValueError, match="timesteps has 2 entries for a trajectory of 4"):
        viz.trajectory_grid(trajectory, timesteps=[2, 1])
    with pytest.raises(ValueError, match="x0_predictions has 1 entries"):
        viz.trajectory_grid(trajectory, x0_predictions=trajectory[:1])


def test_plot_points_trajectory_shares_limits_and_shows_data():
    generator = torch.Generator().manual_seed(0)
    trajectory = [torch.randn(50, 2, generator=generator) * (1 + i) for i in range(11)]
    data = torch.randn(80, 2, generator=generator)
    figure = viz.plot_points_trajectory(trajectory, data, n_columns=6)
    assert len(figure.axes) == 6
    assert all(len(axis.collections) == 2 for axis in figure.axes)  # data + points
    assert len({axis.get_xlim() for axis in figure.axes}) == 1
    low, high = figure.axes[0].get_xlim()
    assert low < float(trajectory[-1].min()) and float(trajectory[-1].max()) < high
    assert figure.axes[-1].get_title() == "step 10"
    with pytest.raises(ValueError, match=r"trajectory\[0\] must be a non-empty point cloud"):
        viz.plot_points_trajectory([torch.zeros(5, 3)])


def test_animate_images_writes_a_gif_with_one_frame_per_step(tmp_path):
    frames = [image_batch(seed, (4, 3, 8, 8)) for seed in range(5)]
    path = tmp_path / "anim" / "images.gif"
    animation = viz.animate_trajectory(frames, path=path, fps=5)
    assert not plt.get_fignums()  # closed: no stray static copy in a notebook
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.size[0] > 0
    assert "<script" in viz.animation_html(animation)


def test_animate_points_writes_a_gif_with_fixed_limits(tmp_path):
    generator = torch.Generator().manual_seed(0)
    frames = [torch.randn(30, 2, generator=generator) / (1 + i) for i in range(4)]
    path = tmp_path / "points.gif"
    animation = viz.animate_trajectory(
        frames, path=path, titles=[f"t = {t}" for t in (3, 2, 1, 0)], data=frames[-1]
    )
    with Image.open(path) as gif:
        assert gif.n_frames == 4
    axis = animation._fig.axes[0]
    low, high = axis.get_xlim()
    assert low < float(frames[0].min()) and float(frames[0].max()) < high
    assert axis.get_title() == "t = 0"  # the last frame drawn


def test_animate_trajectory_rejects_bad_input(tmp_path):
    images = [image_batch(seed) for seed in range(2)]
    with pytest.raises(ValueError, match="non-empty list"):
        viz.animate_trajectory([])
    with pytest.raises(ValueError, match=r"all image batches \(B, C, H, W\) or all point clouds"):
        viz.animate_trajectory([images[0], torch.zeros(5, 2)])
    with pytest.raises(ValueError, match="can only save a .gif"):
        viz.animate_trajectory(images, path=tmp_path / "movie.mp4")
    with pytest.raises(ValueError, match="2 frames but 1 titles"):
        viz.animate_trajectory(images, titles=["one"])
    with pytest.raises(ValueError, match="fps must be a positive number"):
        viz.animate_trajectory(images, fps=0)
    assert not (tmp_path / "movie.mp4").exists()
