"""Diffusion pictures: noise schedules, noising strips, sampling trajectories of images.

:func:`plot_schedules` and :func:`noising_strip` are taught in notebook
``03_forward_diffusion``; :func:`trajectory_grid` in ``04_reverse_diffusion`` and used again
in ``06_latent_diffusion``; :func:`save_trajectory_gif` writes the denoising GIF of
``make demo`` and of the ``ldm-mini`` sampling command. Trajectories are lists of image
batches (B, C, H, W) in [-1, 1], first x_T, last the sample.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from einops import rearrange, repeat
from PIL import Image

from ldm_mini.viz._checks import (
    _as_float_array,
    _describe,
    _evenly_spaced,
    _image_batches,
    _is_torch,
    _nonempty_list,
    _step_labels,
)
from ldm_mini.viz.images import _show_uint8, _tensor_to_uint8, make_grid

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "SNR_DISPLAY_CLIP",
    "noising_strip",
    "plot_schedules",
    "save_trajectory_gif",
    "trajectory_grid",
]


# SNR(t) is clipped to this range before the log in plot_schedules (abar_t = 0 gives SNR 0)
SNR_DISPLAY_CLIP = (1e-10, 1e10)


def _as_timesteps(timesteps: Any) -> list[int]:
    """A non-empty sequence of integer timesteps t >= 0 -> list of Python ints."""
    if timesteps is None or len(timesteps) == 0:
        raise ValueError(
            "timesteps is empty; give at least one integer timestep, e.g. [0, 250, 999]"
        )
    steps = []
    for value in timesteps:
        try:
            step = operator.index(value)
        except TypeError as error:
            raise ValueError(f"timesteps must be integers, got {value!r}") from error
        if step < 0:
            raise ValueError(f"timesteps must be >= 0 (t runs over 0..T-1), got {step}")
        steps.append(step)
    return steps


def _channels_to_show(num_channels: int, channels: int | Sequence[int] | None) -> tuple[list, bool]:
    """Which channels to draw, and whether they make an image (grey or RGB) or one colour map."""
    if channels is None:
        selected = list(range(num_channels)) if num_channels in (1, 3) else [0]
    elif isinstance(channels, int):
        selected = [channels]
    else:
        selected = [int(channel) for channel in channels]
    if len(selected) not in (1, 3):
        raise ValueError(
            f"channels must name 1 channel (shown as a colour map) or 3 (shown as RGB), "
            f"got {selected}"
        )
    outside = [channel for channel in selected if not 0 <= channel < num_channels]
    if outside:
        raise ValueError(
            f"channels {outside} do not exist: the input has {num_channels} channels "
            f"(0..{num_channels - 1})"
        )
    as_image = len(selected) == 3 or num_channels == 1
    return selected, as_image


def plot_schedules(alphas_cumprod: Mapping[str, Any], axes: Sequence[Axes] | None = None) -> Figure:
    """Signal rate, noise rate and log10 SNR of named noise schedules against t = 0..T-1.

    ``alphas_cumprod`` maps a name to abar_t, a 1-D tensor or array (T,) with values in [0, 1].
    Three panels, one curve per schedule in each: the signal rate sqrt(abar_t), the noise rate
    sqrt(1 - abar_t) (x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps) and
    log10 SNR(t) = log10(abar_t / (1 - abar_t)). A zero-terminal-SNR schedule has abar = 0 at its
    last step, where log10 SNR is -inf: for display the SNR is clipped to ``SNR_DISPLAY_CLIP``
    (1e-10 .. 1e10), so such a curve ends in a drop to -10 instead of leaving the plot.
    ``axes``: three matplotlib axes to draw into; None makes a new figure (12 x 3.4 inches).
    """
    import matplotlib.pyplot as plt

    if not isinstance(alphas_cumprod, Mapping) or len(alphas_cumprod) == 0:
        raise ValueError(
            "alphas_cumprod must be a non-empty dict {name: alphas_cumprod (T,)}, "
            f"got {_describe(alphas_cumprod)}"
        )
    curves = {}
    for name, values in alphas_cumprod.items():
        abar = _as_float_array(values, f"alphas_cumprod[{name!r}]")
        if abar.ndim != 1 or abar.size == 0:
            raise ValueError(f"alphas_cumprod[{name!r}] must be 1-D (T,), got shape {abar.shape}")
        if not np.isfinite(abar).all() or abar.min() < 0 or abar.max() > 1:
            raise ValueError(
                f"alphas_cumprod[{name!r}] must lie in [0, 1] (products of 1 - beta_t), "
                f"got values in [{np.nanmin(abar):.3g}, {np.nanmax(abar):.3g}]"
            )
        curves[str(name)] = abar
    if axes is None:
        figure, created = plt.subplots(1, 3, figsize=(12, 3.4))
        axes = list(created)
    else:
        axes = list(np.asarray(axes, dtype=object).ravel())
        if len(axes) != 3:
            raise ValueError(f"axes must be 3 matplotlib axes (one per panel), got {len(axes)}")
        figure = axes[0].figure
    for name, abar in curves.items():
        steps = np.arange(len(abar))
        # signal rate sqrt(abar_t), noise rate sqrt(1 - abar_t)
        axes[0].plot(steps, np.sqrt(abar), label=name)
        axes[1].plot(steps, np.sqrt(1.0 - abar), label=name)
        # SNR(t) = abar_t / (1 - abar_t); abar_t = 1 gives inf, clipped like 0 for display
        with np.errstate(divide="ignore"):
            snr = abar / (1.0 - abar)
        axes[2].plot(steps, np.log10(np.clip(snr, *SNR_DISPLAY_CLIP)), label=name)
    titles = (
        r"signal rate $\sqrt{\bar\alpha_t}$",
        r"noise rate $\sqrt{1-\bar\alpha_t}$",
        r"$\log_{10}\,\mathrm{SNR}(t)$",
    )
    for axis, title in zip(axes, titles, strict=True):
        axis.set_title(title)
        axis.set_xlabel("t")
        axis.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    if len(figure.axes) == 3:
        figure.tight_layout()
    return figure


def noising_strip(
    x0: Any,
    schedule: Any,
    timesteps: Sequence[int],
    generator: Any = None,
    channels: int | Sequence[int] | None = None,
    scale: float = 1.6,
) -> Figure:
    """One image (or latent) noised to each timestep, left to right, titled "t = ...".

    ``x0``: a tensor (C, H, W), images in [-1, 1]. ``schedule``: anything with
    ``q_sample(x0, t, noise=None, generator=None)`` taking x0 (B, ...) and a LongTensor t (B,),
    such as :class:`ldm_mini.diffusion.NoiseSchedule`. One noise eps ~ N(0, I) is drawn (with
    ``generator``) and used for every t, so the strip shows the same noise growing.
    ``channels``: None shows a 1- or 3-channel input as a grey or RGB image (clamped to
    [-1, 1]) and any other input (a latent) as its first channel in a diverging colour map with
    one symmetric scale for the whole strip; an int or a list of 1 channel picks the channel for
    that map, a list of 3 channels shows them as RGB.
    """
    import matplotlib.pyplot as plt
    import torch

    if not _is_torch(x0) or x0.ndim != 3:
        raise ValueError(f"x0 must be one image, a tensor (C, H, W), got {_describe(x0)}")
    if not callable(getattr(schedule, "q_sample", None)):
        raise TypeError(
            f"schedule must have a q_sample(x0, t, noise=None) method (e.g. a NoiseSchedule), "
            f"got {type(schedule).__name__}"
        )
    steps = _as_timesteps(timesteps)
    selected, as_image = _channels_to_show(x0.shape[0], channels)
    x0 = x0.detach().float()
    # one draw eps ~ N(0, I), shared by every t
    noise_device = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=noise_device).to(x0.device)
    batch = repeat(x0, "c h w -> k c h w", k=len(steps))
    t = torch.tensor(steps, dtype=torch.long, device=x0.device)
    with torch.no_grad():
        # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        noisy = schedule.q_sample(batch, t, noise=repeat(noise, "c h w -> k c h w", k=len(steps)))
    if tuple(noisy.shape) != tuple(batch.shape):
        raise ValueError(
            f"schedule.q_sample returned shape {tuple(noisy.shape)}, expected {tuple(batch.shape)}"
        )
    pictures = noisy.detach().cpu().float().numpy()[:, selected]
    count = len(steps)
    figure, axes = plt.subplots(1, count, figsize=(scale * count, scale + 0.5), squeeze=False)
    if as_image:
        images = _tensor_to_uint8(rearrange(pictures, "k c h w -> k h w c"), (-1.0, 1.0))
        for axis, step, image in zip(axes[0], steps, images, strict=True):
            _show_uint8(axis, image)
            axis.set_title(f"t = {step}", fontsize=9)
    else:
        limit = float(np.abs(pictures).max()) or 1.0
        for axis, step, picture in zip(axes[0], steps, pictures, strict=True):
            axis.set_axis_off()
            axis.imshow(picture[0], cmap="RdBu_r", vmin=-limit, vmax=limit)
            axis.set_title(f"t = {step}", fontsize=9)
        figure.suptitle(f"channel {selected[0]}, colour scale ±{limit:.2f}", fontsize=9)
    figure.tight_layout()
    return figure


def trajectory_grid(
    trajectory: Sequence[Any],
    timesteps: Sequence[int] | None = None,
    x0_predictions: Sequence[Any] | None = None,
    n_images: int = 8,
    n_columns: int = 10,
    scale: float = 1.0,
) -> Figure:
    """A sampling trajectory as a grid: rows = images of the batch, columns = steps.

    ``trajectory``: list of image batches (B, C, H, W), C in {1, 3}, roughly in [-1, 1] (clamped
    for display), first x_T, last the sample. The columns are ``min(n_columns, len)`` evenly
    spaced steps, always the first and the last; each column is one axes holding the first
    ``n_images`` images stacked. ``timesteps`` titles the columns (see ``_step_labels``: one per
    step, or one per model call as in a sampler's output). ``x0_predictions`` (one per step, or
    one per model call, aligned with the start of ``trajectory``) adds a second block of rows
    with the predicted x_0 at the same steps; a column without a prediction stays blank.
    """
    import matplotlib.pyplot as plt

    states = _image_batches(trajectory, "trajectory")
    length = len(states)
    blocks = [("x_t", states)]
    if x0_predictions is not None:
        predictions = _image_batches(x0_predictions, "x0_predictions")
        if len(predictions) not in (length, length - 1):
            raise ValueError(
                f"x0_predictions has {len(predictions)} entries for a trajectory of {length}; "
                f"give one per step ({length}) or one per model call ({length - 1})"
            )
        if predictions[0].shape != states[0].shape:
            raise ValueError(
                f"x0_predictions have shape {predictions[0].shape} but the trajectory has "
                f"{states[0].shape}"
            )
        blocks.append(("predicted x_0", predictions))
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be an int >= 1, got {n_images!r}")
    columns = _evenly_spaced(length, n_columns)
    labels = _step_labels(length, timesteps)
    shown = min(n_images, states[0].shape[0])
    height, width = states[0].shape[-2:]
    cell_height = scale * shown * height / width
    figure, axes = plt.subplots(
        len(blocks),
        len(columns),
        figsize=(scale * len(columns), cell_height * len(blocks) + 0.4),
        squeeze=False,
    )
    for row, (name, batches) in enumerate(blocks):
        for column, index in enumerate(columns):
            axis = axes[row, column]
            axis.set_axis_off()
            if index < len(batches):
                strip = rearrange(batches[index][:shown], "n c h w -> n h w c")
                _show_uint8(axis, make_grid(strip, ncols=1, padding=1))
            if row == 0:
                axis.set_title(labels[index], fontsize=8)
        axes[row, 0].text(
            -0.08,
            0.5,
            name,
            rotation=90,
            ha="right",
            va="center",
            transform=axes[row, 0].transAxes,
            fontsize=9,
        )
    figure.tight_layout()
    return figure


def save_trajectory_gif(
    frames: Sequence[Any],
    path: str | Path,
    ncols: int | None = None,
    scale: int = 2,
    duration_ms: int = 120,
    hold_last_ms: int = 1500,
) -> Path:
    """Write a denoising animation: one grid per frame (each (N, C, H, W) in [-1, 1]) as a GIF.

    The last frame (the finished samples) is held for ``hold_last_ms``.
    """
    frames = _nonempty_list(frames, "frames", "image batches")
    pictures = []
    for frame in frames:
        grid = make_grid(frame, ncols=ncols)
        picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).convert("RGB")
        pictures.append(
            picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
        )
    durations = [duration_ms] * (len(pictures) - 1) + [hold_last_ms]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path
