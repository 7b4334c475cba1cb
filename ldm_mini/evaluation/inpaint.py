"""Measuring inpainting on held-out images with fixed held-out masks. Taught in notebook
10_inpainting.

Every method fills the same first n test images with the same masks
(:func:`ldm_mini.inpainting.heldout_masks`) and is scored on the completed images:

* ``fd``: Fréchet distance of the completed images to the originals (FD-EffNet or FID);
* ``perceptual``: the perceptual distance to the original; the images differ only inside the
  mask (the known pixels are pasted back), so it measures the fill;
* ``psnr_hole``: PSNR inside the mask (low for any plausible fill that is not the original:
  a distortion measure, not a quality one);
* ``psnr_known``: PSNR outside the mask, before pasting for the model's own decoder output
  (``inpaint_unpasted``), after pasting for everything else (identical pixels: reported as
  :data:`IDENTICAL_DB`);
* ``seam``: mean |gradient| across the mask's border in the completed image over the same in
  the original (about 1: no visible seam; above 1: an edge the original does not have).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldm_mini.data.config import DataConfig, build_dataset
from ldm_mini.evaluation.autoencoder import perceptual_distance
from ldm_mini.inpainting import FILLS, heldout_masks, repaint
from ldm_mini.pipelines import inpaint, load_inpaint, load_ldm

IDENTICAL_DB = 100.0  # PSNR reported for identical pixels (the error is exactly 0)

__all__ = ["IDENTICAL_DB", "evaluate_inpaint", "masked_psnr", "seam_ratio"]


def masked_psnr(x: Tensor, y: Tensor, region: Tensor) -> float:
    """PSNR (dB, images in [-1, 1]) over the pixels where ``region`` (B, 1, H, W) is 1;
    :data:`IDENTICAL_DB` when they are identical there."""
    weight = region.expand_as(x)
    count = weight.sum()
    if count == 0:
        return float("nan")
    # MSE on [0, 1]: ((x - y) / 2)^2
    mse = float((((x - y) / 2) ** 2 * weight).sum() / count)
    return IDENTICAL_DB if mse == 0 else min(IDENTICAL_DB, -10.0 * math.log10(mse))


def _border_gradients(images: Tensor, masks: Tensor) -> Tensor:
    """|x(p) - x(q)| summed over channels for neighbouring pixels p, q on either side of the
    mask's border (horizontal and vertical pairs), concatenated."""
    pairs = []
    for dim in (-1, -2):
        a, b = (
            images.narrow(dim, 0, images.shape[dim] - 1),
            images.narrow(dim, 1, images.shape[dim] - 1),
        )
        ma, mb = (
            masks.narrow(dim, 0, masks.shape[dim] - 1),
            masks.narrow(dim, 1, masks.shape[dim] - 1),
        )
        border = (ma != mb).expand_as(a[:, :1]).squeeze(1)
        pairs.append((a - b).abs().sum(1)[border])
    return torch.cat(pairs)


def seam_ratio(completed: Tensor, originals: Tensor, masks: Tensor) -> float:
    """Mean |gradient| across the mask's border in ``completed`` over the same in
    ``originals``: about 1 without a seam."""
    ours = _border_gradients(completed, masks)
    theirs = _border_gradients(originals, masks)
    return float(ours.mean() / theirs.mean().clamp(min=1e-6))


def _score(originals, completed, masks, perceptual, feature_extractor, progress) -> dict:
    from ldm_mini import metrics

    fd = metrics.frechet_distance(originals, completed, feature_extractor, progress=progress)
    with torch.no_grad():
        distance = torch.cat([perceptual(originals[i : i + 64], completed[i : i + 64])
                              for i in range(0, len(originals), 64)])  # fmt: skip
    return {
        "fd": fd["fd"],
        "fd_label": fd["label"],
        "perceptual": float(distance.mean()),
        "psnr_hole": masked_psnr(originals, completed, masks),
        "psnr_known": masked_psnr(originals, completed, 1 - masks),
        "seam": seam_ratio(completed, originals, masks),
    }


def _in_batches(fill, images: Tensor, masks: Tensor, name: str, progress: bool, size: int = 100):
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(images), desc=name, unit="image", disable=not progress) as bar:
        for i in range(0, len(images), size):
            out.append(fill(images[i : i + size], masks[i : i + size]).cpu())
            bar.update(len(out[-1]))
    return torch.cat(out)


@torch.no_grad()
def evaluate_inpaint(
    checkpoint: str | Path,
    n: int = 500,
    *,
    steps: int = 50,
    seed: int = 0,
    rival: str | Path | None = None,
    resample: int = 1,
    fills: bool = True,
    feature_extractor: str = "auto",
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Scores of the inpainting ``checkpoint`` on the first n test images with n held-out
    masks: ``{"inpaint": {...}, "inpaint_unpasted": {...}, "repaint": {...}, "mean_fill":
    {...}, "harmonic_fill": {...}, "settings": {...}}``. ``rival``: an unconditional or class
    LDM on the same data, used training-free (:func:`ldm_mini.inpainting.repaint`, ``resample``
    rounds per step); ``fills``: also the non-learned fills."""
    start = time.perf_counter()
    ldm, config = load_inpaint(checkpoint, device)
    data = DataConfig(**{**config["data"], "split": "test", "limit": n, "hflip": False})
    test = build_dataset(data)
    if len(test) < n:
        raise ValueError(f"the test split has only {len(test)} images; use --n {len(test)}")
    originals = torch.stack([test[i]["image"] for i in range(n)])
    masks, kinds = heldout_masks(n, data.image_size)
    perceptual = perceptual_distance("efficientnet-lite0", False, 32, device)

    def model_fill(paste_known: bool):
        def fill(images, batch_masks):
            return inpaint(
                ldm, images, batch_masks, steps=steps, seed=seed, paste_known=paste_known
            )

        return fill

    outputs = {
        "inpaint": _in_batches(model_fill(True), originals, masks, "inpainting LDM", progress),
    }
    # the decoder's own pixels outside the mask: why the known ones are pasted back
    unpasted = _in_batches(model_fill(False), originals, masks, "unpasted", progress)
    if rival is not None:
        rival_ldm, _ = load_ldm(rival, device)
        outputs["repaint"] = _in_batches(
            lambda images, batch_masks: repaint(rival_ldm, images, batch_masks, steps=steps,
                                                resample=resample, seed=seed),
            originals, masks, "RePaint" if resample > 1 else "blended", progress,
        )  # fmt: skip
    if fills:
        for name, fill in FILLS.items():
            outputs[f"{name}_fill"] = fill(originals, masks)
    result: dict[str, Any] = {
        name: _score(originals, completed, masks, perceptual, feature_extractor, progress)
        for name, completed in outputs.items()
    }
    result["inpaint_unpasted"] = {"psnr_known": masked_psnr(originals, unpasted, 1 - masks)}
    result["settings"] = {
        "checkpoint": str(checkpoint),
        "rival": None if rival is None else str(rival),
        "n": n,
        "dataset": data.dataset,
        "steps": steps,
        "resample": resample,
        "seed": seed,
        "mask_kinds": {kind: kinds.count(kind) for kind in sorted(set(kinds))},
        "mask_coverage": float(masks.mean()),
        "perceptual_backbone": perceptual.backbone_name,
        "seconds": time.perf_counter() - start,
    }
    return result
