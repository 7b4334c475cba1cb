"""Image grids with captions, boxes and masks; uint8 conversion; saving figures and grids.

Built in notebook ``00_setup_and_data`` (the datasets tour of :mod:`ldm_mini.tour`:
:func:`show_images`, and :func:`draw_boxes` / :func:`overlay_mask` for the shapes ground
truth) and used by the notebooks after it to look at images, reconstructions and samples
(:func:`show_images`; :func:`make_grid` in ``06_latent_diffusion``); the ``ldm-mini``
commands and ``make demo`` write their PNGs with :func:`save_image_grid` and
:func:`save_figure`. Images may be a torch tensor (N, C, H, W) or
(C, H, W) with values in ``value_range`` (default [-1, 1], the range the models work in), a
numpy array (N, H, W[, C]) of uint8, or a list of PIL images / tensors / arrays ((H, W) or
(H, W, C) each). A 3-D numpy array is read as (N, H, W) grey.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from einops import rearrange
from PIL import Image, ImageDraw

from ldm_mini.viz._checks import _is_torch

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "OVERLAY_COLOURS",
    "draw_boxes",
    "make_grid",
    "overlay_mask",
    "save_figure",
    "save_image_grid",
    "show_images",
    "to_uint8_images",
]


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
    interpolation: str = "antialiased",
):
    """A matplotlib figure of images in a grid, each with its (wrapped) caption below.

    ``interpolation="nearest"`` shows every pixel as a sharp block instead of smoothing it when a
    small image is enlarged: use it to compare sharpness (super-resolution), where smoothing
    would hide the difference between methods (it also keeps the stored PNG smaller).
    """
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
            image[..., 0] if grey else image,
            cmap="gray" if grey else None,
            vmin=0,
            vmax=255,
            interpolation=interpolation,
        )
        if captions is not None:
            axis.set_title(wrapped[index], fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _show_uint8(axis: Axes, image: np.ndarray) -> Any:
    """imshow a uint8 (H, W, 1) or (H, W, 3) array, grey or RGB, with no axis decorations."""
    axis.set_axis_off()
    grey = image.shape[-1] == 1
    return axis.imshow(
        image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255
    )


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
