"""Training pairs for super-resolution: random high-resolution crops and their degradations.

Taught in notebook 08_super_resolution. The bundled ``photos`` have a few whole photographs
per split (the test photos are never cropped for training); every epoch draws new crops.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ldm_mini.data.tensors import colour_jitter, pil_to_tensor
from ldm_mini.superres.degradations import Bicubic, Blind


def check_rescale(rescale: Any) -> tuple[float, float] | None:
    """None, or (lo, hi) with 0 < lo <= hi <= 1 (shrink factors; enlarging would only blur)."""
    if rescale is None:
        return None
    try:
        low, high = (float(value) for value in rescale)
    except (TypeError, ValueError):
        raise ValueError(f"rescale must be null or [lo, hi], got {rescale!r}") from None
    if not 0 < low <= high <= 1:
        raise ValueError(
            f"rescale must satisfy 0 < lo <= hi <= 1 (shrink factors), got {rescale!r}"
        )
    return low, high


class SRCrops(torch.utils.data.Dataset):
    """``length`` random crops of a dataset's images with their low-resolution versions.

    Item ``i`` is a dict: ``image`` (3, crop_size, crop_size) in [-1, 1] (the target),
    ``low`` (3, crop_size / f, crop_size / f) in [-1, 1] (the input, ``degradation`` of the
    target), ``index``. Crop ``i`` comes from image ``i % len(dataset)``, at a position (and a
    horizontal flip, with ``hflip``) drawn from ``numpy.random.default_rng([seed, epoch, i])``,
    which also seeds the degradation: an item is the same in every run and every worker.
    ``jitter_colours``: the target gets :func:`~ldm_mini.data.tensors.colour_jitter` (random
    channel order and saturation) before it is degraded. ``rescale`` (lo, hi) with
    0 < lo <= hi <= 1: the photo is first shrunk by a log-uniform factor s in [lo, hi]
    (antialiased: a crop_size / s region, Lanczos-resized to crop_size; s never so small
    that the region leaves the photo), so the model sees each texture at several scales.
    ``rotate90``: the target is also turned by a random multiple of 90 degrees (with ``hflip``,
    all 8 symmetries of the square), the augmentation SR networks such as EDSR train with.
    """

    def __init__(
        self,
        dataset: Any,
        crop_size: int = 64,
        degradation: Bicubic | Blind | None = None,
        length: int | None = None,
        hflip: bool = True,
        seed: int = 0,
        jitter_colours: bool = False,
        rescale: tuple[float, float] | None = None,
        rotate90: bool = False,
    ) -> None:
        self.degradation = degradation if degradation is not None else Bicubic(4)
        factor = self.degradation.factor
        if not isinstance(crop_size, int) or crop_size < factor or crop_size % factor:
            raise ValueError(
                f"crop_size must be a positive multiple of the degradation's factor {factor}, "
                f"got {crop_size!r}"
            )
        if "image" not in getattr(dataset, "column_names", []) or len(dataset) == 0:
            raise ValueError("dataset must be a non-empty datasets.Dataset with an 'image' column")
        self.images = [dataset[i]["image"].convert("RGB") for i in range(len(dataset))]
        small = [(i, im.size) for i, im in enumerate(self.images) if min(im.size) < crop_size]
        if small:
            raise ValueError(
                f"images smaller than the {crop_size}x{crop_size} crop: {small} (index, size); "
                "use a smaller crop_size or drop them"
            )
        self.crop_size = crop_size
        self.length = 100 * len(self.images) if length is None else int(length)
        self.hflip = hflip
        self.jitter_colours = bool(jitter_colours)
        self.rescale = check_rescale(rescale)
        if not isinstance(rotate90, bool):
            raise ValueError(f"rotate90 must be true or false, got {rotate90!r}")
        self.rotate90 = rotate90
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New crops for a new epoch (the engine calls this)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} crops")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = self.images[index % len(self.images)]
        width, height = image.size
        side = self.crop_size
        if self.rescale is not None:
            lowest = max(self.rescale[0], self.crop_size / min(width, height))
            highest = max(self.rescale[1], lowest)
            # s ~ log-uniform on [lo, hi]: the photo shrunk by s, then cropped
            scale = float(np.exp(rng.uniform(np.log(lowest), np.log(highest))))
            side = min(round(self.crop_size / scale), width, height)
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        crop = image.crop((left, top, left + side, top + side))
        if side != self.crop_size:
            crop = crop.resize((self.crop_size, self.crop_size), Image.Resampling.LANCZOS)
        target = pil_to_tensor(crop)
        if self.hflip and rng.random() < 0.5:
            target = target.flip(-1)
        if self.rotate90:
            # a quarter turn k times, k ~ U{0, 1, 2, 3} (drawn only when on: crops stay as before)
            target = torch.rot90(target, int(rng.integers(4)), dims=(-2, -1))
        degradation_seed = int(rng.integers(2**31))
        if self.jitter_colours:
            target = colour_jitter(target, rng)
        low = self.degradation(target[None], seed=degradation_seed)[0]
        return {"image": target, "low": low, "index": index}
