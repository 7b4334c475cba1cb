"""The torch side of the data layer: images as tensors in [-1, 1] at a requested size.

Taught in notebook 00_setup_and_data; every training stage reads its data through
:class:`TensorImageDataset`. Random choices (crop position, flip, colour jitter) come from a
generator seeded by ``(seed, epoch, index)``, so an item is the same in every run and every
worker.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image

RESIZE_MODES = ("auto", "pad", "resize", "crop")
# colour jitter: the saturation factor s is drawn uniformly from this range
SATURATION_RANGE = (0.6, 1.6)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image (L or RGB, uint8) -> float tensor (C, H, W) in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    tensor = rearrange(torch.from_numpy(array.copy()), "h w c -> c h w")
    # x in [0, 255] -> x / 127.5 - 1 in [-1, 1]
    return tensor.float() / 127.5 - 1.0


def colour_jitter(
    image: torch.Tensor,
    rng: np.random.Generator,
    saturation: tuple[float, float] = SATURATION_RANGE,
) -> torch.Tensor:
    """A random channel order and saturation of an RGB image (3, H, W) in [-1, 1].

    The channels are permuted (one of the 6 orders, uniformly), then pushed away from or
    towards their per-pixel mean m by a factor s ~ U(saturation) and clamped to [-1, 1]:
    a few photos then show a model many more colours than they have (the bundled ``photos``
    train split first had 7, mostly red, brown and black, while its test photos are orange
    and navy; its 26 later wallpaper photos add greens, yellows and blues).
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"colour_jitter needs an RGB image (3, H, W), got {tuple(image.shape)}")
    low, high = saturation
    if not 0.0 <= low <= high:
        raise ValueError(f"saturation must be a range 0 <= low <= high, got {saturation!r}")
    order = torch.from_numpy(rng.permutation(3))
    factor = float(rng.uniform(low, high))
    permuted = image[order]
    mean = permuted.mean(dim=0, keepdim=True)
    # x' = m + s (x - m), m the mean over the channels of each pixel
    return (mean + factor * (permuted - mean)).clamp(-1.0, 1.0)


def border_fill(image: Image.Image) -> tuple[int, ...] | int:
    """Median colour of the image's one-pixel border: the natural padding value."""
    array = np.asarray(image)
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]], axis=0).reshape(
        -1, 1 if array.ndim == 2 else array.shape[2]
    )
    median = np.median(border, axis=0).round().astype(int)
    return int(median[0]) if array.ndim == 2 else tuple(int(v) for v in median)


def fit_image(
    image: Image.Image,
    size: int,
    mode: str,
    rng: np.random.Generator,
    random_crop: bool = False,
    pad_value: int | tuple[int, ...] | None = None,
) -> Image.Image:
    """Bring ``image`` to ``size`` x ``size``.

    ``pad``: centre it on a canvas filled with ``pad_value`` (default: its border median),
    e.g. Fashion-MNIST 28 -> 32. ``resize``: scale the shorter side to ``size`` (bicubic,
    antialiased) and centre-crop. ``crop``: cut a window at native resolution (centred, or at
    a seeded random place with ``random_crop``). ``auto``: ``pad`` when the image fits,
    else ``resize``.
    """
    width, height = image.size
    if mode == "auto":
        mode = "pad" if width <= size and height <= size else "resize"
    if mode == "pad":
        if width > size or height > size:
            raise ValueError(f"cannot pad a {width}x{height} image to {size}x{size}; use 'resize'")
        fill = border_fill(image) if pad_value is None else pad_value
        canvas = Image.new(image.mode, (size, size), fill)
        canvas.paste(image, ((size - width) // 2, (size - height) // 2))
        return canvas
    if mode == "resize":
        scale = size / min(width, height)
        new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=None)
        width, height = image.size
        mode, random_crop = "crop", False
    if mode == "crop":
        if width < size or height < size:
            raise ValueError(f"cannot crop {size}x{size} from a {width}x{height} image")
        if random_crop:
            left = int(rng.integers(0, width - size + 1))
            top = int(rng.integers(0, height - size + 1))
        else:
            left, top = (width - size) // 2, (height - size) // 2
        return image.crop((left, top, left + size, top + size))
    raise ValueError(f"unknown resize mode {mode!r}; choose one of {RESIZE_MODES}")


class TensorImageDataset(torch.utils.data.Dataset):
    """A ``datasets.Dataset`` seen as torch tensors.

    Item ``i`` is a dict: ``image`` float tensor (channels, image_size, image_size) in
    [-1, 1], ``index`` (int), and ``label`` (int) / ``caption`` (str) when the dataset has
    those columns. ``repeat`` N makes each image N items per epoch (item ``i`` shows image
    ``i % len(dataset)``, with its own random crop and flip): many crops of a few large photos.
    ``channels`` 1 (grey) or 3 (RGB); None takes 1 for greyscale datasets
    (judged from the first image) and 3 otherwise. ``jitter_colours`` (RGB only) applies
    :func:`colour_jitter` to every item.
    """

    def __init__(
        self,
        dataset,
        image_size: int = 32,
        channels: int | None = None,
        resize: str = "auto",
        random_crop: bool = False,
        hflip: bool = False,
        pad_value: int | tuple[int, ...] | None = None,
        seed: int = 0,
        repeat: int = 1,
        jitter_colours: bool = False,
    ) -> None:
        if "image" not in dataset.column_names:
            raise ValueError(f"dataset has no 'image' column (columns: {dataset.column_names})")
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {resize!r}; choose one of {RESIZE_MODES}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"repeat must be an int >= 1, got {repeat!r}")
        self.repeat = repeat
        self.dataset = dataset
        self.image_size = int(image_size)
        if channels is None:
            channels = 1 if dataset[0]["image"].mode in ("1", "L", "I", "I;16", "F") else 3
        self.channels = channels
        if jitter_colours and channels != 3:
            raise ValueError("colour jitter needs RGB images (channels=3); turn it off for grey")
        self.jitter_colours = bool(jitter_colours)
        self.resize = resize
        self.random_crop = random_crop
        self.hflip = hflip
        self.pad_value = pad_value
        self.seed = int(seed)
        self.epoch = 0
        self._keys = [k for k in ("label", "caption") if k in dataset.column_names]

    def set_epoch(self, epoch: int) -> None:
        """Change the random crops and flips, as a new epoch of training would."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset) * self.repeat

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        row = self.dataset[int(index) % len(self.dataset)]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        image = row["image"].convert("L" if self.channels == 1 else "RGB")
        image = fit_image(
            image, self.image_size, self.resize, rng, self.random_crop, self.pad_value
        )
        if self.hflip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensor = pil_to_tensor(image)
        if self.jitter_colours:
            tensor = colour_jitter(tensor, rng)
        item: dict[str, Any] = {"image": tensor, "index": int(index)}
        for key in self._keys:
            item[key] = row[key]
        return item


def make_dataloader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose shuffling order is fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
