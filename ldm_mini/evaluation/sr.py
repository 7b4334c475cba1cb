"""Measuring super-resolution: LDM-SR against bicubic upsampling and the regression baseline.

Taught in notebook 08_super_resolution. Every method upscales the same held-out
low-resolution crops (random crops of the test photos, which no training crop came from,
degraded as in training, from a fixed seed) and is scored against the high-resolution
crops with PSNR and SSIM (pixel fidelity), the perceptual distance (deep features) and FD
(the distribution of the outputs against that of the real crops). The paper's Table 5
reports the same kinds of numbers (FID, IS, PSNR, SSIM) for ImageNet 64 -> 256. For a latent
model the first stage's own reconstructions of the high-resolution crops are scored too
(``reconstruction``): no LDM on that autoencoder can do better than its decoder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldm_mini import metrics
from ldm_mini.pipelines import REFINE_T, load_sr, super_resolve
from ldm_mini.samplers import check_eta
from ldm_mini.superres.consistency import (
    back_project,
    bicubic_upsample,
    check_iterations,
    check_projectable,
)
from ldm_mini.superres.data import SRCrops
from ldm_mini.superres.degradations import make_degradation

EVALUATION_SEED = 1234  # the held-out crops: the same for every checkpoint


def heldout_crops(config: dict[str, Any], n: int, split: str = "test") -> tuple[Tensor, Tensor]:
    """n high-resolution crops (n, 3, S, S) of the ``split`` photos and their degraded inputs."""
    from ldm_mini.data import load_dataset

    data = config["data"]
    source = load_dataset(data["dataset"], split=split, **(data.get("options") or {}))
    crops = SRCrops(
        source,
        data["crop_size"],
        make_degradation(data["degradation"], data["factor"]),
        length=n,
        hflip=False,
        seed=EVALUATION_SEED,
    )
    items = [crops[i] for i in range(n)]
    return torch.stack([i["image"] for i in items]), torch.stack([i["low"] for i in items])


def score(real: Tensor, fake: Tensor, perceptual, feature_extractor: str = "auto") -> dict:
    """PSNR, SSIM and perceptual distance (means over images) and FD of ``fake`` vs ``real``."""
    fd = metrics.frechet_distance(real, fake, feature_extractor)
    with torch.no_grad():
        distance = torch.cat(
            [perceptual(real[i : i + 64], fake[i : i + 64]) for i in range(0, len(real), 64)]
        )
    return {
        "psnr": float(metrics.psnr(real, fake).mean()),
        "ssim": float(metrics.ssim(real, fake).mean()),
        "perceptual": float(distance.mean()),
        "fd": fd["fd"],
        "fd_label": fd["label"],
    }


def _upscale(
    ldm,
    low: Tensor,
    objective: str,
    factor: int,
    steps: int,
    seed: int,
    temperature: float = 1.0,
    eta: float = 0.0,
    refine_from=None,
    refine_t: int = REFINE_T,
    progress: bool = False,
    name: str = "LDM-SR",
) -> Tensor:
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(low), desc=name, unit="crop", disable=not progress) as bar:
        for i in range(0, len(low), 32):
            out.append(
                super_resolve(ldm, low[i : i + 32], objective, factor=factor, steps=steps,
                              seed=seed + i, temperature=temperature, eta=eta,
                              refine_from=refine_from, refine_t=refine_t)
            )  # fmt: skip
            bar.update(len(out[-1]))
    return torch.cat(out).cpu()


def evaluate_sr(
    checkpoint: str | Path,
    regression: str | Path | None = None,
    n: int = 200,
    *,
    steps: int = 50,
    seed: int = 0,
    feature_extractor: str = "auto",
    device: str = "cpu",
    back_projection: int = 0,
    temperature: float = 1.0,
    eta: float = 0.0,
    split: str = "test",
    refine: bool = False,
    refine_t: int = REFINE_T,
    perceptual_backbone: str = "auto",
    allow_download: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Scores of ``checkpoint`` (LDM-SR), bicubic upsampling and, when given, the regression
    checkpoint, on the same n held-out crops: ``{"ldm_sr": {...}, "bicubic": {...},
    "regression": {...}, "reconstruction": {...}, "settings": {...}}`` (``reconstruction``: the
    first stage's D(E(x)) of the crops, the ceiling of any LDM on it; not for pixel space).
    ``back_projection`` > 0 also scores every method's outputs after that many iterations of
    :func:`ldm_mini.superres.back_project` (entries ``"ldm_sr_bp"``, ``"bicubic_bp"``, ...; bicubic
    degradation only). ``temperature`` scales LDM-SR's starting noise and ``eta`` its DDIM
    sampler's fresh noise (:func:`ldm_mini.pipelines.super_resolve`). ``split="train"`` scores
    crops of the training photos instead (the same seed): for choosing settings such as the
    temperature without looking at the test photos. ``refine``: also score LDM-SR started from
    the regression's prediction noised to step ``refine_t`` (entry ``"ldm_sr_refined"``; see
    :func:`ldm_mini.pipelines.super_resolve`'s ``refine_from``; needs ``regression``).
    ``perceptual_backbone`` ("auto" or one of :data:`ldm_mini.perceptual.BACKBONES`) and
    ``allow_download`` choose the perceptual distance; ``progress`` shows bars (on stderr)."""
    from tqdm.auto import tqdm

    from ldm_mini.evaluation.autoencoder import perceptual_distance

    start = time.perf_counter()
    ldm, config = load_sr(checkpoint, device)
    if config["objective"]["kind"] != "diffusion":
        raise ValueError(f"{checkpoint} is a {config['objective']['kind']} checkpoint; pass it "
                         "as --regression and an LDM-SR checkpoint as --checkpoint")  # fmt: skip
    factor = config["data"]["factor"]
    check_iterations(back_projection)
    check_eta(eta)
    if back_projection:
        check_projectable(config["data"]["degradation"])
    if refine and regression is None:
        raise ValueError("refine starts LDM-SR from the regression's prediction: give --regression")
    real, low = heldout_crops(config, n, split)
    perceptual = perceptual_distance(perceptual_backbone, allow_download, 32, device)
    outputs = {
        "ldm_sr": _upscale(
            ldm, low, "diffusion", factor, steps, seed, temperature, eta, progress=progress
        ),
        "bicubic": bicubic_upsample(low, factor),
    }
    if regression is not None:
        baseline, baseline_config = load_sr(regression, device)
        if baseline_config["objective"]["kind"] != "regression":
            raise ValueError(f"{regression} is not a regression checkpoint (objective.kind)")
        if baseline_config["data"]["degradation"] != config["data"]["degradation"]:
            raise ValueError("the regression baseline was trained on another degradation")
        outputs["regression"] = _upscale(
            baseline, low, "regression", factor, steps, seed, progress=progress, name="regression"
        )
        if refine:
            outputs["ldm_sr_refined"] = _upscale(
                ldm, low, "diffusion", factor, steps, seed, temperature, eta, baseline, refine_t,
                progress=progress, name="LDM-SR refined",
            )  # fmt: skip
    if config["first_stage"]["checkpoint"] != "identity":
        with torch.no_grad():
            outputs["reconstruction"] = torch.cat(
                [ldm.decode(ldm.encode(real[i : i + 64].to(device))).clamp(-1, 1).cpu()
                 for i in range(0, n, 64)]
            )  # fmt: skip
    if back_projection:
        outputs.update({
            f"{name}_bp": back_project(fake, low, factor, back_projection)
            for name, fake in list(outputs.items())
        })  # fmt: skip
    result: dict[str, Any] = {
        name: score(real, fake.to(real), perceptual, feature_extractor)
        for name, fake in tqdm(outputs.items(), desc="scores", unit="method", disable=not progress)
    }
    result["settings"] = {
        "checkpoint": str(checkpoint),
        "regression": None if regression is None else str(regression),
        "n": n,
        "split": split,
        "crop_size": config["data"]["crop_size"],
        "factor": factor,
        "degradation": config["data"]["degradation"],
        "steps": steps,
        "back_projection": back_projection,
        "temperature": temperature,
        "eta": eta,
        "refine_t": refine_t if refine else None,
        "perceptual_backbone": perceptual.backbone_name,
        "seconds": time.perf_counter() - start,
    }
    return result
