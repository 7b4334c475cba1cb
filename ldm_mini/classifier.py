"""A class score for samples: a small Fashion-MNIST classifier reads what the LDM drew.

Taught in notebook 09_evaluation_and_f_sweep (and used in notebook 06). FD says how far the
samples' feature statistics are from the test images'; it does not say whether a sample asked
for "trouser" looks like a trouser. A classifier trained on the real training images can: the
*class accuracy* of class-conditional samples is the fraction that it reads as the class they
were asked for. It is only as good as the classifier (its own test accuracy is the ceiling:
real test images score about that), and a blob can still be read as some class, so it is read
beside FD, not instead of it.

The classifier is a plain CNN (three stages of two 3x3 convolutions with batch norm, max
pooling, global average pooling, one linear layer) on 32x32 grey images in [-1, 1], the
images the Fashion-MNIST LDMs generate. The shipped one is ``shipped:fashion_mnist_classifier``
(its card states its test accuracy and the command that trained it,
``tools/train_fashion_classifier.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn

from ldm_mini.checkpoints import CheckpointError, load_checkpoint, save_checkpoint

STAGE = "classifier"
SHIPPED_FASHION = "shipped:fashion_mnist_classifier"
FASHION_CLASSES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip


@dataclass
class ClassifierConfig:
    """The CNN's shape: input channels and size, classes, channels per stage."""

    in_channels: int = 1
    image_size: int = 32
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)
    class_names: tuple[str, ...] = FASHION_CLASSES

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.class_names = tuple(self.class_names)
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names for {self.num_classes} classes."
            )
        if not self.widths or min(self.widths) < 1 or self.in_channels < 1:
            raise ValueError("widths and in_channels must be positive.")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["widths"] = list(self.widths)
        values["class_names"] = list(self.class_names)
        return values


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ImageClassifier(nn.Module):
    """images (B, C, H, W) in [-1, 1] -> class logits (B, num_classes)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = config.in_channels
        for index, width in enumerate(config.widths):
            layers += [_conv_block(channels, width), _conv_block(width, width)]
            if index < len(config.widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, config.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        features = self.features(images)
        pooled = reduce(features, "b c h w -> b c", "mean")
        return self.head(pooled)


def prepare_images(images: Tensor, config: ClassifierConfig) -> Tensor:
    """Images (B, C, H, W) in [-1, 1] -> what the classifier reads: its channels and size.

    RGB becomes grey (the channel mean) for a grey classifier; other sizes are resized
    (bilinear, antialiased). Values are clamped to [-1, 1] as when a sample is saved.
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor (B, C, H, W) in [-1, 1], got {got}.")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values; check the model that made them.")
    images = images.float().clamp(-1, 1)
    channels = images.shape[1]
    if channels != config.in_channels:
        if config.in_channels == 1 and channels == 3:
            images = images.mean(dim=1, keepdim=True)
        else:
            raise ValueError(
                f"the classifier reads {config.in_channels}-channel images, got {channels}."
            )
    size = config.image_size
    if images.shape[-2:] != (size, size):
        images = F.interpolate(
            images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return images


@torch.no_grad()
def predict(
    classifier: ImageClassifier, images: Tensor, batch_size: int = 500
) -> Tensor:
    """Predicted classes (B,) of images (B, C, H, W) in [-1, 1]."""
    classifier.eval()
    device = next(classifier.parameters()).device
    images = prepare_images(images, classifier.config)
    chunks = [
        classifier(images[start : start + batch_size].to(device)).argmax(dim=1).cpu()
        for start in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(chunks)


def class_accuracy(
    classifier: ImageClassifier, images: Tensor, labels: Tensor
) -> dict[str, Any]:
    """How often the classifier reads each image as the class it was asked for.

    ``images`` (B, C, H, W) in [-1, 1]; ``labels`` (B,) the classes asked for. Returns
    ``{"accuracy", "per_class": {name: accuracy or None when absent}, "n"}``.
    """
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels.")
    if labels.numel() == 0:
        raise ValueError("no images to score.")
    classes = classifier.config.num_classes
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise ValueError(f"labels must be in [0, {classes}); got {labels.min()}..{labels.max()}.")
    correct = predict(classifier, images) == labels
    per_class: dict[str, float | None] = {}
    for index, name in enumerate(classifier.config.class_names):
        chosen = labels == index
        per_class[name] = float(correct[chosen].float().mean()) if chosen.any() else None
    return {"accuracy": float(correct.float().mean()), "per_class": per_class, "n": len(labels)}


def save_classifier(
    classifier: ImageClassifier, directory: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write the classifier as a checkpoint folder (the course's format, float16 weights)."""
    config = {"model": classifier.config.to_dict(), **(extra or {})}
    return save_checkpoint(
        directory, stage=STAGE, config=config, model_state=classifier.state_dict(), half=True
    )


def load_classifier(
    source: str | Path = SHIPPED_FASHION, device: str | torch.device = "cpu"
) -> ImageClassifier:
    """A classifier checkpoint (a folder or ``shipped:NAME``), in eval mode on ``device``."""
    checkpoint = load_checkpoint(source, expected_stage=STAGE)
    try:
        config = ClassifierConfig(**checkpoint.config["model"])
        classifier = ImageClassifier(config)
        classifier.load_state_dict(checkpoint.model_state)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{checkpoint.path} is not a classifier this version can read ({err}); "
            "retrain it with tools/train_fashion_classifier.py."
        ) from err
    return classifier.to(device).eval()
