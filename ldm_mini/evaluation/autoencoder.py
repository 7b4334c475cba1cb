"""Measuring a first stage: how well the autoencoder reconstructs held-out images.

Taught in notebooks 01_perceptual_autoencoder and 02_vector_quantization. PSNR and SSIM
(pixel fidelity), the perceptual distance (deep features, what the perceptual loss trains)
and FD of the reconstructions against the originals, with the latent's shape and std (1 / the
latent scale factor s of notebook 06).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ldm_mini.data.config import DataConfig, build_dataset
from ldm_mini.pipelines import load_autoencoder


def perceptual_distance(backbone: str, allow_download: bool, min_size: int, device: str):
    """The perceptual distance an evaluation scores with, on ``device``; weights that are not
    there give one line in the evaluate command's words (``--allow-download``, ``--perceptual``)."""
    from ldm_mini.perceptual import PerceptualDistance, PerceptualWeightsUnavailable

    try:
        return PerceptualDistance(backbone, allow_download, min_size=min_size).to(device)
    except PerceptualWeightsUnavailable as err:
        raise PerceptualWeightsUnavailable(
            f"{err} (ldm-mini evaluate: add --allow-download where the network is, or give "
            "--perceptual efficientnet-lite0)"
        ) from err


@torch.no_grad()
def evaluate_autoencoder(
    path: str | Path,
    dataset: str | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 250,
    perceptual_backbone: str | None = None,
    feature_extractor: str = "auto",
    with_fd: bool = True,
    device: str = "cpu",
    allow_download: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Reconstruction metrics of a checkpoint on a dataset split (default: the one it trained
    on, test split): PSNR, SSIM, perceptual distance, FD, latent shape and std, seconds.

    ``perceptual_backbone``: one of :data:`ldm_mini.perceptual.BACKBONES` or "auto" (default:
    the one the checkpoint trained with); ``allow_download`` lets LPIPS fetch torchvision's
    weights when they are not cached. ``progress``: bars over the batches (on stderr)."""
    from tqdm.auto import tqdm

    from ldm_mini import metrics

    start = time.perf_counter()
    model, config = load_autoencoder(path, device)
    data = DataConfig(**{**config["data"], "split": split, "limit": limit, "hflip": False})
    if dataset is not None:
        data.dataset = dataset
    images = build_dataset(data)
    backbone = perceptual_backbone or config.get("perceptual_backbone") or "auto"
    min_size = config.get("loss", {}).get("perceptual_min_size", 64)
    perceptual = perceptual_distance(backbone, allow_download, min_size, device)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
    sums = {"psnr": 0.0, "ssim": 0.0, "perceptual": 0.0}
    latent_sum = latent_sq = 0.0
    latent_count = 0
    originals, reconstructions = [], []
    latent_shape = None
    for batch in tqdm(loader, desc="reconstructions", unit="batch", disable=not progress):
        x = batch["image"].to(device)
        latent = model.encode_latent(x)
        reconstruction = model.decode_latent(latent).clamp(-1, 1)
        latent_shape = list(latent.shape[1:])
        latent_sum += float(latent.double().sum())
        latent_sq += float((latent.double() ** 2).sum())
        latent_count += latent.numel()
        sums["psnr"] += float(metrics.psnr(x, reconstruction).sum())
        sums["ssim"] += float(metrics.ssim(x, reconstruction).sum())
        sums["perceptual"] += float(perceptual(x, reconstruction).sum())
        if with_fd:
            originals.append(x.cpu())
            reconstructions.append(reconstruction.cpu())
    count = len(images)
    mean = latent_sum / latent_count
    result: dict[str, Any] = {
        "checkpoint": str(path),
        "dataset": data.dataset,
        "split": split,
        "n": count,
        "psnr": sums["psnr"] / count,
        "ssim": sums["ssim"] / count,
        "perceptual": sums["perceptual"] / count,
        "perceptual_backbone": perceptual.backbone_name,
        "latent_shape": latent_shape,
        "latent_std": (latent_sq / latent_count - mean**2) ** 0.5,
    }
    if with_fd:
        fd = metrics.frechet_distance(
            torch.cat(originals), torch.cat(reconstructions), feature_extractor, progress=progress
        )
        result["fd"] = fd["fd"]
        result["fd_feature_extractor"] = fd["feature_extractor"]
        result["fd_label"] = fd["label"]
    result["seconds"] = time.perf_counter() - start
    return result
