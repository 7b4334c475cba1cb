"""Pictures of every stage: image grids with captions, boxes and masks.

Built in notebook 00_setup_and_data and used by every notebook after it. Images may be a
torch tensor (N, C, H, W) or (C, H, W) with values in ``value_range`` (default [-1, 1], the
range the models work in), a numpy array (N, H, W[, C]) of uint8, or a list of PIL images /
tensors / arrays ((H, W) or (H, W, C) each). A 3-D numpy array is read as (N, H, W) grey.

The diffusion pictures (:func:`plot_schedules`, :func:`noising_strip`, :func:`trajectory_grid`,
:func:`plot_points_trajectory`, :func:`animate_trajectory`) are taught in notebooks
``03_forward_diffusion`` and ``04_reverse_diffusion``. matplotlib and torch are imported inside
the functions that need them, so importing this module stays light.
"""

from __future__ import annotations

import operator
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from einops import rearrange, repeat
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from matplotlib.animation import FuncAnimation
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# colours for objects 1, 2, ... in masks and boxes (tab10, as 0-255 RGB)
OVERLAY_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def _tensor_to_uint8(array: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    low, high = value_range
    assert high > low, f"value_range must be increasing, got {value_range}"
    # map [low, high] -> [0, 255]
    scaled = (array.astype(np.float32) - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_uint8_images(images: Any, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Any supported image collection -> uint8 array (N, H, W, C) with C in {1, 3}.

    Floating-point inputs (torch or numpy) are mapped from ``value_range`` to [0, 255];
    uint8 inputs and PIL images are taken as they are. All images must share one size.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if _is_torch(images):
        images = images.detach().float().cpu().numpy()
        if images.ndim == 3:
            images = images[None]
        assert images.ndim == 4, f"expected (N, C, H, W) or (C, H, W), got {images.shape}"
        assert images.shape[1] in (1, 3), f"expected 1 or 3 channels, got shape {images.shape}"
        return _tensor_to_uint8(rearrange(images, "n c h w -> n h w c"), value_range)
    if isinstance(images, np.ndarray):
        array = images
        if array.ndim == 3:
            array = array[..., None]  # a 3-D array is (N, H, W) greyscale
        assert array.ndim == 4, f"expected (N, H, W[, C]) array, got {images.shape}"
        if array.dtype != np.uint8:
            array = _tensor_to_uint8(array, value_range)
        return array
    if isinstance(images, Sequence):
        if len(images) == 0:
            raise ValueError("no images to show")
        arrays = [to_uint8_images(_one(image), value_range)[0] for image in images]
        channels = max(a.shape[-1] for a in arrays)
        arrays = [np.repeat(a, 3, axis=-1) if a.shape[-1] < channels else a for a in arrays]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"images differ in size: {sorted(shapes)}; resize them first")
        return np.stack(arrays)
    raise TypeError(f"cannot show images of type {type(images).__name__}")


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _one(image: Any) -> Any:
    """One image -> a batch of one: (1, H, W, C) array, or a (C, H, W) tensor as it is."""
    if isinstance(image, Image.Image):
        grey = image.mode in ("1", "L", "I", "F")
        array = np.asarray(image.convert("L" if grey else "RGB"))
        return array[None, ..., None] if grey else array[None]
    if isinstance(image, np.ndarray):
        return (image[..., None] if image.ndim == 2 else image)[None]  # (H, W[, C])
    return image


def make_grid(
    images: Any,
    ncols: int | None = None,
    padding: int = 2,
    pad_value: int = 255,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """Tile images into one uint8 array (rows*(H+p)+p, cols*(W+p)+p, C), row-major."""
    array = to_uint8_images(images, value_range)
    count, height, width, channels = array.shape
    ncols = ncols or int(np.ceil(np.sqrt(count)))
    nrows = int(np.ceil(count / ncols))
    blank = np.full((nrows * ncols - count, height, width, channels), pad_value, np.uint8)
    array = np.concatenate([array, blank])
    array = np.pad(array, ((0, 0), (padding, 0), (padding, 0), (0, 0)), constant_values=pad_value)
    grid = rearrange(array, "(r c) h w ch -> (r h) (c w) ch", r=nrows, c=ncols)
    return np.pad(grid, ((0, padding), (0, padding), (0, 0)), constant_values=pad_value)


def show_images(
    images: Any,
    captions: Sequence[str] | None = None,
    ncols: int | None = None,
    title: str | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    scale: float = 1.4,
    caption_width: int = 18,
):
    """A matplotlib figure of images in a grid, each with its (wrapped) caption below."""
    import matplotlib.pyplot as plt

    array = to_uint8_images(images, value_range)
    count = len(array)
    if captions is not None and len(captions) != count:
        raise ValueError(f"{count} images but {len(captions)} captions")
    ncols = min(ncols or int(np.ceil(np.sqrt(count))), count)
    nrows = int(np.ceil(count / ncols))
    lines = 0
    if captions is not None:
        wrapped = [textwrap.fill(str(c), caption_width) for c in captions]
        lines = max(w.count("\n") + 1 for w in wrapped)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(scale * ncols, scale * nrows + 0.18 * lines * nrows), squeeze=False
    )
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        image = array[index]
        grey = image.shape[-1] == 1
        axis.imshow(
            image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255
        )
        if captions is not None:
            axis.set_title(wrapped[index], fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str] | None = None,
    scale: int = 4,
) -> Image.Image:
    """Upscale ``image`` by ``scale`` (nearest) and draw boxes (x0, y0, x1, y1) and labels."""
    big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for index, box in enumerate(boxes):
        colour = OVERLAY_COLOURS[index % len(OVERLAY_COLOURS)]
        x0, y0, x1, y1 = (v * scale for v in box)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=2)
        if labels is not None:
            draw.text((x0 + 2, y0 + 1), labels[index], fill=colour)
    return big


def overlay_mask(image: Image.Image, mask: Image.Image, alpha: float = 1.0) -> Image.Image:
    """Colour each object k of an index mask (0 = background) over the image (alpha 1: solid)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    labels = np.asarray(mask)
    assert labels.shape == rgb.shape[:2], f"mask {labels.shape} vs image {rgb.shape[:2]}"
    out = rgb.copy()
    for k in np.unique(labels[labels > 0]):
        colour = np.asarray(OVERLAY_COLOURS[(int(k) - 1) % len(OVERLAY_COLOURS)], np.float32)
        where = labels == k
        # blend: (1 - alpha) * image + alpha * colour
        out[where] = (1 - alpha) * rgb[where] + alpha * colour
    return Image.fromarray(np.rint(out).astype(np.uint8))


def show_token_attention(
    image: Any,
    token_maps: Any,
    tokens: Sequence[str],
    title: str | None = None,
    alpha: float = 0.55,
    scale: float = 1.8,
):
    """The image, then one panel per token with its attention map overlaid (a heat map).

    ``image``: (C, H, W) in [-1, 1]; ``token_maps``: (M, H, W) from
    :func:`ldm_mini.attention.token_attention_maps` for this image (M >= len(tokens); maps
    past the tokens, i.e. padding, are not shown); ``tokens``: the words to title the panels.
    Each map is scaled to its own [min, max] so its shape is visible.
    """
    import matplotlib.pyplot as plt

    maps = _as_float_array(token_maps, "token_maps")
    picture = to_uint8_images(image[None] if _is_torch(image) else np.asarray(image)[None])[0]
    if maps.ndim != 3 or maps.shape[1:] != picture.shape[:2]:
        raise ValueError(
            f"token_maps must be (M, H, W) with the image's size {picture.shape[:2]}, "
            f"got {maps.shape}"
        )
    tokens = list(tokens)
    if not 0 < len(tokens) <= maps.shape[0]:
        raise ValueError(f"{len(tokens)} tokens for {maps.shape[0]} maps")
    fig, axes = plt.subplots(1, len(tokens) + 1, figsize=(scale * (len(tokens) + 1), scale * 1.2))
    grey = picture.shape[-1] == 1
    shown = picture[..., 0] if grey else picture
    axes[0].imshow(shown, cmap="gray" if grey else None, vmin=0, vmax=255)
    axes[0].set_title("image", fontsize=8)
    for axis, token, heat in zip(axes[1:], tokens, maps, strict=False):
        low, high = float(heat.min()), float(heat.max())
        axis.imshow(shown, cmap="gray" if grey else None, vmin=0, vmax=255)
        axis.imshow((heat - low) / max(high - low, 1e-12), cmap="jet", alpha=alpha, vmin=0, vmax=1)
        axis.set_title(token, fontsize=8)
    for axis in axes:
        axis.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure (PNG etc.), creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def save_image_grid(
    images: Any, path: str | Path, ncols: int | None = None, scale: int = 1
) -> Path:
    """Write images (N, C, H, W) in [-1, 1] as one grid PNG (nearest-neighbour ``scale``)."""
    grid = make_grid(images, ncols=ncols)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


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


# --------------------------------------------------------------------------------------
# Diffusion: schedules, noising strips, sampling trajectories, animations
# --------------------------------------------------------------------------------------

# SNR(t) is clipped to this range before the log in plot_schedules (abar_t = 0 gives SNR 0)
SNR_DISPLAY_CLIP = (1e-10, 1e10)


def _as_float_array(value: Any, name: str) -> np.ndarray:
    """A torch tensor or an array-like of numbers -> float64 numpy array on the CPU."""
    if _is_torch(value):
        value = value.detach().cpu().double().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must be a tensor or an array of numbers, got {type(value).__name__}"
        ) from error


def _nonempty_list(values: Any, name: str, what: str) -> list[Any]:
    """A non-empty list or tuple as a list; anything else -> ValueError naming ``what``."""
    if not isinstance(values, (list, tuple)) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty list of {what}, got {_describe(values)}")
    return list(values)


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__


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


def _show_uint8(axis: Axes, image: np.ndarray) -> Any:
    """imshow a uint8 (H, W, 1) or (H, W, 3) array, grey or RGB, with no axis decorations."""
    axis.set_axis_off()
    grey = image.shape[-1] == 1
    return axis.imshow(
        image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255
    )


def _image_batches(batches: Any, name: str) -> list[np.ndarray]:
    """A non-empty list of image batches (B, C, H, W), C in {1, 3}, all one shape -> arrays."""
    arrays = [
        _as_float_array(batch, f"{name}[{index}]")
        for index, batch in enumerate(_nonempty_list(batches, name, "image batches (B, C, H, W)"))
    ]
    for index, array in enumerate(arrays):
        if array.ndim != 4 or array.shape[0] == 0:
            raise ValueError(
                f"{name}[{index}] must be a non-empty image batch (B, C, H, W), "
                f"got shape {array.shape}"
            )
        if array.shape != arrays[0].shape:
            raise ValueError(
                f"{name}[{index}] has shape {array.shape} but {name}[0] has {arrays[0].shape}; "
                "every step must hold the same batch"
            )
    if arrays[0].shape[1] not in (1, 3):
        raise ValueError(
            f"{name} images have {arrays[0].shape[1]} channels; only 1 (grey) or 3 (RGB) can be "
            "shown: decode latents with the first stage first, or pass [x[:, :1] for x in ...]"
        )
    return arrays


def _points(value: Any, name: str) -> np.ndarray:
    """A point cloud (N, 2), N >= 1 -> float64 array."""
    array = _as_float_array(value, name)
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty point cloud (N, 2), got shape {array.shape}")
    return array


def _evenly_spaced(length: int, n_columns: int) -> list[int]:
    """min(n_columns, length) evenly spaced indices into 0..length-1, first and last included."""
    if isinstance(n_columns, bool) or not isinstance(n_columns, int) or n_columns < 2:
        raise ValueError(
            f"n_columns must be an int >= 2 (the first and the last step), got {n_columns!r}"
        )
    count = min(n_columns, length)
    # spacing (length-1)/(count-1) >= 1, so the rounded indices are distinct
    return [int(i) for i in np.round(np.linspace(0, length - 1, count)).astype(int)]


def _step_labels(length: int, timesteps: Sequence[int] | None) -> list[str]:
    """Column titles: "t = ..." from ``timesteps``, else "step i".

    ``timesteps`` may have one entry per trajectory step, or one fewer (a sampler's convention:
    trajectory[i] is x_t at timesteps[i] and the last entry is the final sample).
    """
    if timesteps is None:
        return [f"step {index}" for index in range(length)]
    steps = [int(step) for step in timesteps]
    if len(steps) == length:
        return [f"t = {step}" for step in steps]
    if len(steps) == length - 1:
        return [f"t = {step}" for step in steps] + ["sample"]
    raise ValueError(
        f"timesteps has {len(steps)} entries for a trajectory of {length}; give one per step "
        f"({length}) or one per model call ({length - 1}, the last entry being the sample)"
    )


def _square_limits(clouds: Sequence[np.ndarray], margin: float = 0.05) -> tuple[float, float]:
    """One (low, high) range for both axes that holds every point of every cloud."""
    stacked = np.concatenate([cloud[np.isfinite(cloud).all(axis=1)] for cloud in clouds])
    if len(stacked) == 0:
        return -1.0, 1.0
    low, high = float(stacked.min()), float(stacked.max())
    half = max(high - low, 1e-6) * (0.5 + margin)
    middle = 0.5 * (low + high)
    return middle - half, middle + half


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


def plot_points_trajectory(
    trajectory: Sequence[Any],
    data: Any = None,
    n_columns: int = 6,
    timesteps: Sequence[int] | None = None,
    scale: float = 2.2,
) -> Figure:
    """A 2-D sampling trajectory: one scatter per column, evenly spaced steps, first and last.

    ``trajectory``: list of point clouds (N, 2), first x_T, last the sample. ``data``: the true
    points (M, 2), drawn in grey behind every panel. All panels share one square range, so the
    noise visibly contracts onto the data. ``timesteps`` titles the columns as in
    :func:`trajectory_grid`.
    """
    import matplotlib.pyplot as plt

    clouds = [
        _points(cloud, f"trajectory[{index}]")
        for index, cloud in enumerate(_nonempty_list(trajectory, "trajectory", "(N, 2) clouds"))
    ]
    reference = None if data is None else _points(data, "data")
    columns = _evenly_spaced(len(clouds), n_columns)
    labels = _step_labels(len(clouds), timesteps)
    shown = [clouds[index] for index in columns]
    low, high = _square_limits(shown + ([] if reference is None else [reference]))
    figure, axes = plt.subplots(
        1, len(columns), figsize=(scale * len(columns), scale + 0.3), squeeze=False
    )
    for axis, index, cloud in zip(axes[0], columns, shown, strict=True):
        if reference is not None:
            axis.scatter(reference[:, 0], reference[:, 1], s=2, color="0.8", linewidths=0)
        axis.scatter(cloud[:, 0], cloud[:, 1], s=2, color="C0", linewidths=0)
        axis.set(xlim=(low, high), ylim=(low, high), xticks=[], yticks=[], aspect="equal")
        axis.set_title(labels[index], fontsize=9)
    figure.tight_layout()
    return figure


def animate_trajectory(
    frames: Sequence[Any],
    path: str | Path | None = None,
    fps: int = 10,
    titles: Sequence[str] | None = None,
    data: Any = None,
    scale: float = 4.0,
) -> FuncAnimation:
    """An animation of a trajectory; saved as a GIF when ``path`` ends in ``.gif``.

    ``frames``: all image batches (B, C, H, W), C in {1, 3}, in [-1, 1] (each frame one grid,
    :func:`make_grid`), or all point clouds (N, 2) (a scatter with fixed axis limits covering
    every frame; ``data`` (M, 2) is drawn in grey behind). ``titles``: one per frame (default
    "frame i / n"). The figure is closed before returning, so a notebook shows only the
    animation: ``IPython.display.HTML(animation_html(anim))``. Pillow merges identical
    consecutive frames of a GIF into one; the default titles keep every frame distinct.
    """
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter

    frames = _nonempty_list(frames, "frames", "image batches (B, C, H, W) or clouds (N, 2)")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    if titles is not None and len(titles) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(titles)} titles; give one per frame")
    target = None if path is None else Path(path)
    if target is not None and target.suffix.lower() != ".gif":
        raise ValueError(
            f"can only save a .gif (PillowWriter), got {str(path)!r}; "
            "use path=None and animation_html(anim) to show it in a notebook"
        )
    arrays = [_as_float_array(frame, f"frames[{index}]") for index, frame in enumerate(frames)]
    count = len(arrays)
    labels = [str(title) for title in titles] if titles is not None else None
    labels = labels or [f"frame {index + 1} / {count}" for index in range(count)]

    if all(array.ndim == 2 and array.shape[1] == 2 and len(array) > 0 for array in arrays):
        reference = None if data is None else _points(data, "data")
        low, high = _square_limits(arrays + ([] if reference is None else [reference]))
        figure, axis = plt.subplots(figsize=(scale, scale))
        if reference is not None:
            axis.scatter(reference[:, 0], reference[:, 1], s=3, color="0.8", linewidths=0)
        artist = axis.scatter(arrays[0][:, 0], arrays[0][:, 1], s=3, color="C0", linewidths=0)
        axis.set(xlim=(low, high), ylim=(low, high), xticks=[], yticks=[], aspect="equal")

        def draw(index: int) -> tuple:
            artist.set_offsets(arrays[index])
            axis.set_title(labels[index], fontsize=10)
            return (artist,)

    elif all(array.ndim == 4 for array in arrays):
        batches = _image_batches(arrays, "frames")
        grids = [make_grid(rearrange(batch, "n c h w -> n h w c")) for batch in batches]
        height, width = grids[0].shape[:2]
        figure, axis = plt.subplots(figsize=(scale, scale * height / width + 0.4))
        artist = _show_uint8(axis, grids[0])

        def draw(index: int) -> tuple:
            grid = grids[index]
            artist.set_data(grid[..., 0] if grid.shape[-1] == 1 else grid)
            axis.set_title(labels[index], fontsize=10)
            return (artist,)

    else:
        shapes = sorted({array.shape for array in arrays})[:4]
        raise ValueError(
            f"frames must be all image batches (B, C, H, W) or all point clouds (N, 2); "
            f"got shapes {shapes}"
        )
    animation = FuncAnimation(figure, draw, frames=count, interval=1000.0 / fps, blit=False)
    plt.close(figure)  # the animation keeps the figure; closing it avoids a stray static copy
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        animation.save(target, writer=PillowWriter(fps=fps))
    return animation


def animation_html(animation: FuncAnimation) -> str:
    """An animation as self-contained HTML with play controls (``IPython.display.HTML(...)``)."""
    return animation.to_jshtml()
