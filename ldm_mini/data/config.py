"""The ``data`` section of the image stages and the training images it describes.

The autoencoder and the LDM train on a :class:`DataConfig` (which dataset, split, size,
augmentation); :func:`build_dataset` turns it into a
:class:`~ldm_mini.data.tensors.TensorImageDataset`. The evaluations build the test split the
same way. Taught in notebook 00_setup_and_data (datasets) and used from notebook 01 on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ldm_mini.configs import Section


@dataclass
class DataConfig(Section):
    """Which images the autoencoder trains on, and how they become tensors."""

    dataset: str = "fashion_mnist"
    split: str = "train"
    image_size: int = 32
    channels: int | None = None  # None: 1 for greyscale datasets, 3 otherwise
    resize: str = "auto"
    hflip: bool = False
    limit: int | None = None  # use only the first N images (quick runs)
    # options for the dataset's loader, e.g. {"prompts": "seen"} for shapes (see load_dataset)
    options: dict[str, Any] | None = None
    # None: one item per image, brought to image_size by `resize`; N: N random crops of
    # image_size x image_size per image and epoch at native resolution (a few large photos)
    crops_per_image: int | None = None
    # random channel order and saturation per item (RGB only; ldm_mini.data.tensors.colour_jitter)
    jitter_colours: bool = False

    def __post_init__(self) -> None:
        if self.crops_per_image is not None and (
            isinstance(self.crops_per_image, bool)
            or not isinstance(self.crops_per_image, int)
            or self.crops_per_image < 1
        ):
            raise ValueError(
                f"data.crops_per_image must be null or an int >= 1, got {self.crops_per_image!r}"
            )


def build_dataset(data: DataConfig, seed: int = 0):
    """The training images as a :class:`~ldm_mini.data.TensorImageDataset`."""
    from ldm_mini.data import TensorImageDataset, load_dataset

    kwargs = dict(data.options or {})
    if data.dataset == "shapes" and data.limit is not None and "num_samples" not in kwargs:
        from ldm_mini.data.shapes import DEFAULT_SIZES

        # shapes are generated, and any prefix equals the smaller set: render only the limit
        kwargs["num_samples"] = min(data.limit, DEFAULT_SIZES.get(data.split, data.limit))
    hf_dataset = load_dataset(data.dataset, split=data.split, **kwargs)
    if data.limit is not None:
        hf_dataset = hf_dataset.select(range(min(data.limit, len(hf_dataset))))
    if data.crops_per_image is not None:
        return TensorImageDataset(
            hf_dataset,
            data.image_size,
            data.channels,
            "crop",
            random_crop=True,
            hflip=data.hflip,
            seed=seed,
            repeat=data.crops_per_image,
            jitter_colours=data.jitter_colours,
        )
    return TensorImageDataset(
        hf_dataset,
        data.image_size,
        data.channels,
        data.resize,
        hflip=data.hflip,
        seed=seed,
        jitter_colours=data.jitter_colours,
    )
