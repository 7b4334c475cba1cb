"""Non-learned fills: the floor any inpainting model must beat. Taught in notebook 10_inpainting.

* :func:`mean_fill`: the hole takes the mean colour of the image's known pixels.
* :func:`harmonic_fill`: the hole takes the smoothest surface that meets its border, the
  solution of Laplace's equation (each missing pixel the mean of its four neighbours), found by
  Jacobi iterations from the mean fill. It continues colours and soft gradients inward, as the
  diffusion-based fills of image editors do (OpenCV's Navier-Stokes and Telea methods are
  relatives), but it cannot invent an edge or a texture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ldm_mini.inpainting.condition import check_pair, paste

__all__ = ["FILLS", "harmonic_fill", "mean_fill"]


def mean_fill(images: Tensor, masks: Tensor) -> Tensor:
    """Images (B, C, H, W) in [-1, 1] with the hole (masks (B, 1, H, W), 1 = missing) set to
    the mean colour of the known pixels of each image (0 where nothing is known)."""
    check_pair(images, masks)
    known = 1 - masks
    count = known.sum(dim=(2, 3), keepdim=True)
    mean = (images * known).sum(dim=(2, 3), keepdim=True) / count.clamp(min=1)
    return paste(mean.expand_as(images), images, masks)


def harmonic_fill(images: Tensor, masks: Tensor, iterations: int = 500) -> Tensor:
    """The hole filled with the harmonic (Laplace) interpolation of its border, by
    ``iterations`` Jacobi steps u <- mean of the 4 neighbours inside the hole; known pixels
    unchanged. Images (B, C, H, W) in [-1, 1]."""
    check_pair(images, masks)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    kernel = torch.tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]])
    kernel = kernel.to(images).expand(images.shape[1], 1, 3, 3)
    filled = mean_fill(images, masks)
    for _ in range(iterations):
        # u(p) = (u(up) + u(down) + u(left) + u(right)) / 4 inside the hole
        neighbours = F.conv2d(F.pad(filled, (1, 1, 1, 1), mode="replicate"), kernel,
                              groups=images.shape[1])  # fmt: skip
        filled = paste(neighbours, images, masks)
    return filled


FILLS = {"mean": mean_fill, "harmonic": harmonic_fill}
