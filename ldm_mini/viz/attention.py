"""Attention pictures: where each token of a caption looks in the image.

Taught in notebook ``07_cross_attention_conditioning``: :func:`show_token_attention` overlays
the cross-attention maps of :func:`ldm_mini.attention.token_attention_maps` on the image, one
panel per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ldm_mini.viz._checks import _as_float_array, _is_torch
from ldm_mini.viz.images import to_uint8_images

__all__ = ["show_token_attention"]


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
    Each map is scaled to its own [min, max] so its shape is visible. Under the heat maps the
    image is shown in grey, so that a red object never reads as the heat map's red.
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
    # luminance (ITU-R BT.601) of a colour image: the backdrop of every heat map
    backdrop = shown if grey else picture.astype(np.float32) @ np.array([0.299, 0.587, 0.114])
    for axis, token, heat in zip(axes[1:], tokens, maps, strict=False):
        low, high = float(heat.min()), float(heat.max())
        axis.imshow(backdrop, cmap="gray", vmin=0, vmax=255)
        axis.imshow((heat - low) / max(high - low, 1e-12), cmap="jet", alpha=alpha, vmin=0, vmax=1)
        axis.set_title(token, fontsize=8)
    for axis in axes:
        axis.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
